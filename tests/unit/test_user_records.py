"""Users and token revocations in the metadata: the records' wire form, how the state
applies them (a deleted user stays deleted, expired revocations are dropped), the
snapshot round trip (controller and broker-facing), the image sharing them, and the
directory's precedence (the metadata wins per user, the bootstrap file fills in)."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from dmq.metadata.records import (
    MalformedRecordError,
    RemoveUserScramCredential,
    RevokeToken,
    UserScramCredential,
    decode_batch,
    encode_batch,
    record_from_wire,
)
from dmq.metadata.state import MetadataState
from dmq.protocol.errors import ErrorCode
from dmq.security.scram import CredentialStore, make_credential
from dmq.security.users import UserDirectory, plan_alter, salted_password


def _cred(user: str, password: str, mech: str = "SCRAM-SHA-256") -> UserScramCredential:
    c = make_credential(password, mech)
    return UserScramCredential(user, mech, c.salt, c.iterations, c.stored_key, c.server_key)


def _apply(state: MetadataState, *records: Any) -> None:
    state.apply_entry(state.version + 1, [r.to_wire() for r in records])


def test_records_round_trip_through_an_entry() -> None:
    recs = [_cred("alice", "pw"), RemoveUserScramCredential("bob", "SCRAM-SHA-512"),
            RevokeToken("t1", 2_000, 1_000)]
    assert decode_batch(encode_batch(recs)) == recs
    assert [r.TYPE.value for r in recs] == [17, 18, 19]


def test_a_credential_record_with_a_text_key_is_malformed() -> None:
    with pytest.raises(MalformedRecordError):
        record_from_wire([17, "alice", "SCRAM-SHA-256", "salt", 4096, b"k", b"k"])


def test_state_sets_removes_and_remembers_deleted_users() -> None:
    st = MetadataState()
    a256, a512 = _cred("alice", "pw"), _cred("alice", "pw", "SCRAM-SHA-512")
    _apply(st, a256, a512)
    before = st.image()
    _apply(st, RemoveUserScramCredential("alice", "SCRAM-SHA-256"))
    assert st.users["alice"] == {"SCRAM-SHA-512": a512}
    # a published image never sees a change
    assert before.users["alice"] == {"SCRAM-SHA-256": a256, "SCRAM-SHA-512": a512}
    _apply(st, RemoveUserScramCredential("alice", "SCRAM-SHA-512"))
    assert st.users == {"alice": {}}  # deleted, and remembered as such


def test_revocations_are_dropped_once_expired() -> None:
    st = MetadataState()
    _apply(st, RevokeToken("a", 5_000, 1_000), RevokeToken("b", 9_000, 2_000))
    assert st.revoked_tokens == {"a": 5_000, "b": 9_000}
    img = st.image()
    _apply(st, RevokeToken("c", 20_000, 6_000))  # written at 6 s: "a" expired at 5 s
    assert st.revoked_tokens == {"b": 9_000, "c": 20_000}
    _apply(st, RevokeToken("d", 100, 6_500))  # expired already: not kept
    assert "d" not in st.revoked_tokens
    assert img.revoked_tokens == {"a": 5_000, "b": 9_000}  # the published image's


@pytest.mark.parametrize("include_offsets", [True, False])
def test_snapshot_round_trip(include_offsets: bool) -> None:
    st = MetadataState()
    _apply(st, _cred("alice", "pw"), _cred("bob", "pw2", "SCRAM-SHA-512"),
           RemoveUserScramCredential("bob", "SCRAM-SHA-512"), RevokeToken("t", 9_000, 1_000))
    snap = msgpack.unpackb(msgpack.packb(st.to_snapshot(include_offsets=include_offsets),
                                         use_bin_type=True), raw=False, strict_map_key=False)
    other = MetadataState(keep_offsets=include_offsets)
    other.restore(snap)
    assert other.users == st.users
    assert other.users["bob"] == {}
    assert other.revoked_tokens == {"t": 9_000}
    img = other.image()
    assert img.users == st.users and img.revoked_tokens == {"t": 9_000}


def test_snapshot_without_users_has_no_user_keys() -> None:
    snap = MetadataState().to_snapshot()
    assert "users" not in snap and "revoked_tokens" not in snap
    st = MetadataState()
    st.restore(snap)
    assert st.users == {} and st.revoked_tokens == {}


def test_the_image_shares_the_users_until_they_change() -> None:
    st = MetadataState()
    _apply(st, _cred("alice", "pw"))
    img = st.image()
    assert img.users is st.users
    _apply(st, _cred("bob", "pw"))
    assert "bob" not in img.users and "bob" in st.image().users


def test_directory_precedence() -> None:
    file_store = CredentialStore({"root": {"SCRAM-SHA-256": make_credential("root-pw")},
                                  "alice": {"SCRAM-SHA-256": make_credential("file-pw")}})
    st = MetadataState()
    users = UserDirectory(file_store, lambda: st)
    assert users.any_credential("root") is not None  # the file fills in
    _apply(st, _cred("alice", "raft-pw"))
    alice = users.any_credential("alice")
    assert alice is not None and alice.check_password("raft-pw")  # the metadata wins
    assert not alice.check_password("file-pw")
    _apply(st, RemoveUserScramCredential("root", "SCRAM-SHA-256"))
    assert users.any_credential("root") is None  # deleted stays deleted
    assert users.lookup("root", "SCRAM-SHA-256") is None
    assert sorted(users.all_users()) == ["alice"]


def test_plan_alter_derives_keys_and_adopts_a_file_user_whole() -> None:
    both = {m: make_credential("old", m) for m in ("SCRAM-SHA-256", "SCRAM-SHA-512")}
    st = MetadataState()
    users = UserDirectory(CredentialStore({"carol": both}), lambda: st)
    salt = b"s" * 16
    salted = salted_password("SCRAM-SHA-256", "new-pw", salt, 4096)
    recs, results = plan_alter(users, [], [("carol", "SCRAM-SHA-256", 4096, salt, salted)])
    assert results == [("carol", 0, None)]
    _apply(st, *recs)
    assert set(st.users["carol"]) == {"SCRAM-SHA-256", "SCRAM-SHA-512"}  # 512 kept
    new = users.lookup("carol", "SCRAM-SHA-256")
    assert new is not None and new.check_password("new-pw") and not new.check_password("old")
    assert not any(salted in r.to_wire() for r in recs)  # the salted password is not kept


@pytest.mark.parametrize("deletions,upsertions,code", [
    ([("nobody", "SCRAM-SHA-256")], [], ErrorCode.RESOURCE_NOT_FOUND),
    ([], [("u", "SCRAM-SHA-256", 100, b"s" * 16, b"x" * 32)], ErrorCode.UNACCEPTABLE_CREDENTIAL),
    ([], [("u", "SCRAM-SHA-256", 4096, b"s" * 16, b"x" * 5)], ErrorCode.UNACCEPTABLE_CREDENTIAL),
    ([], [("u", "MD5", 4096, b"s" * 16, b"x" * 16)], ErrorCode.UNSUPPORTED_SASL_MECHANISM),
    ([("u", "SCRAM-SHA-256")], [("u", "SCRAM-SHA-256", 4096, b"s" * 16, b"x" * 32)],
     ErrorCode.DUPLICATE_RESOURCE),
])
def test_plan_alter_refusals(deletions: list[tuple[str, str]],
                             upsertions: list[tuple[str, str, int, bytes, bytes]],
                             code: ErrorCode) -> None:
    recs, results = plan_alter(UserDirectory(), deletions, upsertions)
    assert recs == []
    assert [(u, c) for u, c, _ in results] == [(results[0][0], int(code))]
