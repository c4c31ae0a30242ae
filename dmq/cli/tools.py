"""Console tools `dmq-produce` and `dmq-consume`, like Kafka's console producer and
consumer. Thin: parse flags, call `dmq.client`, print.

Both print errors as one line on stderr (`error: ...`), never a traceback, and exit
non-zero: 1 for a cluster-side problem (no reachable node, unknown topic or partition,
records not acknowledged), 2 for bad arguments, 130 on Ctrl-C.

dmq-produce counts every record's outcome with one callback per batch (never per
record: `DeliveryTally`), and reports how many records were not acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, NoReturn

import click

from dmq.cli.common import command_config_option, error_text, install_uvloop
from dmq.client.cluster import parse_bootstrap
from dmq.client.consumer import Consumer
from dmq.client.errors import DmqError, IllegalStateError
from dmq.client.producer import ManyHandle, Producer, RecordHandle
from dmq.client.records import ConsumerRecord, TopicPartition
from dmq.protocol.errors import RequestTimedOutError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
MAX_OFFSET = 2**63 - 1


class ToolError(Exception):
    """A one-line reason to stop, with the exit code to use."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _run_tool(command: click.Command, argv: Sequence[str] | None) -> NoReturn:
    """Run a click command with one-line errors and our exit codes."""
    try:
        command.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
    except click.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except ToolError as exc:
        if exc.code:
            click.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a defect, still reported as one line, never a traceback
        click.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(0)


def _run(coro: Any) -> Any:
    """Run the tool's coroutine (inside `--command-config`'s security, which
    `command_config_option` applied around the command)."""
    install_uvloop()
    try:
        return asyncio.run(coro)
    except DmqError as exc:
        raise ToolError(error_text(exc)) from None
    except (ValueError, IllegalStateError, OSError) as exc:
        raise ToolError(str(exc)) from None


# ---- dmq-produce -----------------------------------------------------------------------
def _utf8_text(what: str, text: str) -> str:
    """`text` if it is valid UTF-8 (argv from a non-UTF-8 locale holds the undecodable
    bytes as lone surrogates); a usage error naming `what` otherwise."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raw = text.encode(errors="surrogateescape")
        raise click.UsageError(f"{what} must be UTF-8 text, got the bytes {raw!r}") from None
    return text


def _shown(raw: bytes) -> str:
    """Bytes as the user typed them when they are text, else as a bytes literal."""
    try:
        return repr(raw.decode())
    except UnicodeDecodeError:
        return repr(raw)


def _check_bootstrap(bootstrap: str) -> None:
    _utf8_text("--bootstrap", bootstrap)
    try:
        parse_bootstrap(bootstrap)
    except ValueError as exc:
        raise click.UsageError(f"--bootstrap: {exc}") from None


def _parse_headers(items: Sequence[str]) -> list[tuple[str, bytes]]:
    """KEY=VALUE pairs. The key is text (the wire carries header keys as strings); the
    value is bytes, taken exactly as given, so a value that is not UTF-8 is kept."""
    out = []
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise click.UsageError(f"--header expects KEY=VALUE, got {item!r}")
        out.append((_utf8_text("a --header key", k), v.encode(errors="surrogateescape")))
    return out


class DeliveryTally:
    """Counts every record's outcome without a future or callback per record: records
    are counted per batch future (`RecordHandle.batch_future`, shared by all records of
    one batch), and one callback per batch adds the batch's count to acknowledged or
    failed when the batch completes."""

    def __init__(self) -> None:
        self._pending: dict[asyncio.Future[int], int] = {}
        self.acknowledged = 0
        self.failed = 0
        self.first_error: BaseException | None = None

    def add(self, handle: RecordHandle) -> None:
        self._count(handle.batch_future, 1)

    def add_many(self, handle: ManyHandle) -> None:
        """Count the records of one `send_many` call (per batch segment)."""
        for seg in handle.segments:
            self._count(seg.batch.future, seg.record_count)

    def _count(self, fut: asyncio.Future[int], records: int) -> None:
        n = self._pending.get(fut)
        if n is None:
            self._pending[fut] = records
            fut.add_done_callback(self._settle)
        else:
            self._pending[fut] = n + records

    def _settle(self, fut: asyncio.Future[int]) -> None:
        n = self._pending.pop(fut, 0)
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is None:
            self.acknowledged += n
        else:
            self.failed += n
            if self.first_error is None:
                self.first_error = exc

    async def wait_all(self, timeout_ms: int) -> None:
        """Wait until every counted batch has completed and is tallied. The producer
        completes each batch within its delivery timeout; a batch still open after
        `timeout_ms` (which should exceed it) counts as failed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while self._pending:
            done, _ = await asyncio.wait(list(self._pending),
                                         timeout=max(0.0, deadline - loop.time()))
            for fut in done:
                self._settle(fut)  # idempotent: a settled future is no longer pending
            if not done and self._pending:
                n = sum(self._pending.values())
                self._pending.clear()  # their callbacks, if they ever run, add nothing
                self.failed += n
                if self.first_error is None:
                    self.first_error = RequestTimedOutError(
                        f"{n} record(s) had no outcome after {timeout_ms} ms")


class _Progress:
    """A progress line on stderr, only on a terminal, at most every 0.5 s."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.monotonic()
        self.last = self.start
        self.shown = False

    def maybe_show(self, records: int, nbytes: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.5:
            return
        self.last = now
        rate = records / max(1e-9, now - self.start)
        sys.stderr.write(f"\r{records:,} records, {nbytes / 1e6:,.1f} MB, {rate:,.0f} rec/s ")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


class _InputReader:
    """Reads input on a daemon thread (a blocked terminal read must not keep the process
    alive after Ctrl-C, as an executor thread would). At most 4 chunks wait unread, so
    a fast file never outruns the producer. An empty chunk marks the end."""

    def __init__(self, read_chunk: Callable[[], bytes], loop: asyncio.AbstractEventLoop
                 ) -> None:
        self._read = read_chunk
        self._loop = loop
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._slots = threading.Semaphore(4)
        threading.Thread(target=self._pump, name="dmq-produce-input", daemon=True).start()

    def _pump(self) -> None:
        while True:
            self._slots.acquire()
            try:
                chunk = self._read()
            except (OSError, ValueError):
                chunk = b""
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
            except RuntimeError:
                return  # the loop is closed: the tool is exiting
            if not chunk:
                return

    async def get(self) -> bytes:
        chunk = await self._queue.get()
        self._slots.release()
        return chunk


_KEY, _SEPARATOR, _VALUE = itemgetter(0), itemgetter(1), itemgetter(2)  # of bytes.partition


def _not_acknowledged(tally: DeliveryTally, records: int, line_no: int,
                      stopped_early: bool) -> ToolError:
    failed = tally.failed
    more = f"; stopped reading input after line {line_no:,}" if stopped_early else ""
    return ToolError(f"{failed:,} of {records:,} records were not acknowledged "
                     f"(first error: {tally.first_error}){more}")


async def produce(bootstrap: str, topic: str, acks: str, key_separator: str | None,
                  headers: list[tuple[str, bytes]], read_chunk: Callable[[], bytes],
                  partition: int | None = None, compression: str | None = None,
                  linger_ms: int = 5, timeout_ms: int = 10_000,
                  progress: bool = False, echo: Callable[[str], None] = print,
                  request_timeout_ms: int = 10_000, delivery_timeout_ms: int = 30_000
                  ) -> tuple[int, int]:
    """Send one record per input line; returns (records, value bytes).

    `timeout_ms` bounds the wait for metadata and buffer space, `request_timeout_ms`
    one produce request, `delivery_timeout_ms` a record from send to acknowledgement
    (retries included). Every record's outcome counts: when any record is not
    acknowledged, reading stops and a `ToolError` says how many of the records sent
    were not (and the first error)."""
    loop = asyncio.get_running_loop()
    records = 0
    nbytes = 0
    sep = key_separator.encode(errors="surrogateescape") if key_separator else None
    bar = _Progress(progress)
    started = time.monotonic()
    tally = DeliveryTally()
    # every batch completes within the delivery timeout (the producer expires it); the
    # margin only matters if the producer itself failed
    wait_ms = delivery_timeout_ms + request_timeout_ms + 5_000

    async with Producer(bootstrap, acks=acks, linger_ms=linger_ms,
                        compression_type=compression, max_block_ms=timeout_ms,
                        request_timeout_ms=request_timeout_ms,
                        delivery_timeout_ms=delivery_timeout_ms,
                        client_id="dmq-produce") as producer:
        parts = await producer.partitions_for(topic)
        if partition is not None and partition not in parts:
            raise ToolError(f"topic {topic!r} has no partition {partition} "
                            f"(it has {len(parts)}: 0..{len(parts) - 1})")
        reader = _InputReader(read_chunk, loop)
        pending = b""
        line_no = 0
        stopped_early = False
        while not stopped_early:
            chunk = await reader.get()
            if not chunk:
                lines = [pending] if pending else []
                pending = b""
            else:
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
            if lines:
                # the whole chunk's lines in one `send_many` call
                if b"\r" in chunk or lines[0].endswith(b"\r"):  # CRLF input
                    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
                keys = values = None
                bad = -1
                if sep is not None:
                    split = [ln.partition(sep) for ln in lines]
                    found = list(map(_SEPARATOR, split))
                    if b"" in found:  # a line without the separator: send the lines before it
                        bad = found.index(b"")
                        split = split[:bad]
                    keys = list(map(_KEY, split))
                    values = list(map(_VALUE, split))
                else:
                    values = lines
                if values:
                    tally.add_many(await producer.send_many(
                        topic, values, keys=keys, partition=partition, headers=headers or None))
                    line_no += len(values)
                    records += len(values)
                    nbytes += sum(map(len, values))
                if bad >= 0:
                    await producer.flush(wait_ms)
                    await tally.wait_all(wait_ms)
                    sent = f"; {records:,} records before it were sent" if records else ""
                    if tally.failed:
                        sent += f", {tally.failed:,} of them not acknowledged"
                    raise ToolError(f"line {line_no + 1} has no key separator "
                                    f"{_shown(sep)}{sent}")  # type: ignore[arg-type]
                if tally.failed:
                    stopped_early = True
                bar.maybe_show(records, nbytes)
            if not chunk:
                break
            if records and progress is False and records < 1024:
                # interactive use: deliver each typed line now, and report its failure
                await producer.flush(wait_ms)
                await tally.wait_all(wait_ms)
                if tally.failed:
                    stopped_early = True
        await producer.flush(wait_ms)
        await tally.wait_all(wait_ms)
    bar.done()
    if tally.failed:
        raise _not_acknowledged(tally, records, line_no, stopped_early)
    elapsed = max(1e-9, time.monotonic() - started)
    echo(f"produced {records:,} records ({nbytes:,} bytes) to {topic} in {elapsed:.2f} s: "
         f"{records / elapsed:,.0f} records/s, {nbytes / elapsed / 1e6:,.2f} MB/s")
    return records, nbytes


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bootstrap", "-b", required=True, metavar="HOST:PORT[,...]",
              help="any controllers or brokers of the cluster")
@click.option("--topic", "-t", required=True)
@click.option("--acks", type=click.Choice(["all", "1", "0"]), default="all", show_default=True)
@click.option("--key-separator", default=None, metavar="SEP",
              help="split each line into key SEP value")
@click.option("--header", "headers", multiple=True, metavar="KEY=VALUE",
              help="a header on every record (repeatable)")
@click.option("--file", "path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="read lines from this file instead of stdin")
@click.option("--partition", type=int, default=None, help="send every record to this partition")
@click.option("--compression", type=click.Choice(["none", "zstd", "lz4"]), default="none",
              show_default=True)
@click.option("--linger-ms", type=click.IntRange(min=0), default=5, show_default=True,
              help="how long a batch may wait for more records before it is sent")
@click.option("--timeout-ms", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="how long to wait for the topic's metadata or for buffer space "
                   "(the producer's max_block_ms); nothing else")
@click.option("--request-timeout-ms", type=click.IntRange(min=1), default=10_000,
              show_default=True,
              help="how long one produce request may wait for its answer before it is "
                   "retried (also bounds each metadata request)")
@click.option("--delivery-timeout-ms", type=click.IntRange(min=1), default=30_000,
              show_default=True,
              help="how long a record may take from send to acknowledgement, retries "
                   "included; must be at least --linger-ms + --request-timeout-ms")
@command_config_option
def _produce_command(bootstrap: str, topic: str, acks: str, key_separator: str | None,
                     headers: tuple[str, ...], path: str | None, partition: int | None,
                     compression: str, linger_ms: int, timeout_ms: int,
                     request_timeout_ms: int, delivery_timeout_ms: int) -> None:
    """Send one record per input line (stdin by default); print a summary.

    Every record's outcome counts: when any record is not acknowledged (per --acks)
    within --delivery-timeout-ms, the tool stops reading input, waits for the records
    already sent, prints how many were not acknowledged and the first error, and exits
    with 1. Header values and key-separated keys are taken as the exact bytes given.
    """
    _check_bootstrap(bootstrap)
    _utf8_text("--topic", topic)
    if delivery_timeout_ms < linger_ms + request_timeout_ms:
        raise click.UsageError(
            f"--delivery-timeout-ms ({delivery_timeout_ms}) must be at least --linger-ms + "
            f"--request-timeout-ms ({linger_ms} + {request_timeout_ms} = "
            f"{linger_ms + request_timeout_ms})")
    if partition is not None and partition < 0:
        raise click.UsageError(f"--partition must be 0 or more, got {partition}")
    hdrs = _parse_headers(headers)
    fd = os.open(path, os.O_RDONLY) if path else sys.stdin.fileno()
    show_progress = sys.stderr.isatty() and (path is not None or not sys.stdin.isatty())

    def read_chunk() -> bytes:
        # os.read, not the buffered stdin object: a thread blocked inside a buffered
        # read holds its lock, and the interpreter aborts at exit (Ctrl-C) over it
        return os.read(fd, 1 << 20)

    try:
        _run(produce(bootstrap, topic, acks, key_separator, hdrs, read_chunk, partition,
                     None if compression == "none" else compression, linger_ms, timeout_ms,
                     show_progress, echo=lambda s: click.echo(s, err=True),
                     request_timeout_ms=request_timeout_ms,
                     delivery_timeout_ms=delivery_timeout_ms))
    finally:
        if path:
            os.close(fd)


def produce_main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of `dmq-produce`."""
    _run_tool(_produce_command, argv)


# ---- dmq-consume -----------------------------------------------------------------------
FORMATS = ("text", "value", "key-value", "json", "hex", "base64")
FORMATS_HELP = """Output formats, one line per record (a null key or value prints as null):

\b
  text, value  the value as UTF-8 text (bytes that are not UTF-8 show as U+FFFD)
  key-value    key TAB value, both as text
  hex          the value's bytes as lowercase hex digits
  base64       the value's bytes in standard base64
  json         {"topic", "partition", "offset", "timestamp", "key", "value",
               "headers": [[key, value], ...]}; a key, value or header value that is
               valid UTF-8 is a JSON string, any other bytes are an object
               {"base64": "..."} (so binary data never breaks the line)
"""


def _as_bytes(data: Any) -> bytes:
    """Stored keys and values are bytes; a record written by another client may hold
    text or another msgpack value, shown by its text form."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return str(data).encode(errors="surrogatepass")


def _text(data: Any) -> str:
    if data is None:
        return "null"
    if isinstance(data, str):
        return data.encode(errors="surrogatepass").decode(errors="replace")
    return _as_bytes(data).decode(errors="replace")


def _json_bytes(data: Any) -> Any:
    """UTF-8 text as a JSON string, any other bytes as {"base64": ...}."""
    if data is None:
        return None
    raw = _as_bytes(data)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}


def _hex(data: Any) -> str:
    return "null" if data is None else _as_bytes(data).hex()


def _base64(data: Any) -> str:
    return "null" if data is None else base64.b64encode(_as_bytes(data)).decode()


def _json(r: ConsumerRecord) -> str:
    return json.dumps({"topic": r.topic, "partition": r.partition, "offset": r.offset,
                       "timestamp": r.timestamp, "key": _json_bytes(r.key),
                       "value": _json_bytes(r.value),
                       "headers": [[_text(k), _json_bytes(v)] for k, v in r.headers]})


_FORMATTERS: dict[str, Callable[[ConsumerRecord], str]] = {
    "text": lambda r: _text(r.value),
    "value": lambda r: _text(r.value),
    "key-value": lambda r: f"{_text(r.key)}\t{_text(r.value)}",
    "hex": lambda r: _hex(r.value),
    "base64": lambda r: _base64(r.value),
    "json": _json,
}


# the formats that print the value alone: `dmq-consume` reads them by batch, values only
_VALUE_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "text": _text, "value": _text, "hex": _hex, "base64": _base64}


def format_record(r: ConsumerRecord, fmt: str) -> str:
    """One output line (without its newline) for a record; `fmt` is one of FORMATS.
    The line is ASCII for hex, base64 and json; text formats may hold any character."""
    return _FORMATTERS[fmt](r)


async def consume(bootstrap: str, topic: str, from_beginning: bool, partition: int | None,
                  offset: str | None, max_messages: int | None, timeout_ms: int | None,
                  fmt: str, write: Callable[[str], None] = print,
                  metadata_timeout_ms: int = 10_000, group: str | None = None) -> int:
    """Print records as they arrive; returns how many were printed. With `group`, joins
    that consumer group (committed offsets, coordinator-side assignment); otherwise
    reads every partition (or one) by manual assignment."""
    reset = "earliest" if from_beginning else "latest"
    count = 0
    async with Consumer(bootstrap, auto_offset_reset=reset, client_id="dmq-consume",
                        request_timeout_ms=metadata_timeout_ms, group_id=group) as consumer:
        parts = await consumer.partitions_for_topic(topic, min(3000, metadata_timeout_ms))
        if group is not None:
            consumer.subscribe([topic])
            tps = []
        elif partition is not None:
            if partition not in parts:
                raise ToolError(f"topic {topic!r} has no partition {partition} "
                                f"(it has {len(parts)})")
            tps = [TopicPartition(topic, partition)]
        else:
            tps = [TopicPartition(topic, p) for p in parts]
        if tps:
            consumer.assign(tps)
        if offset is not None:
            if offset == "earliest":
                await consumer.seek_to_beginning(*tps)
            elif offset == "latest":
                await consumer.seek_to_end(*tps)
            else:
                for tp in tps:
                    consumer.seek(tp, int(offset))
        else:
            for tp in tps:  # resolve positions now, so records produced from here on count
                await consumer.position(tp)
        loop = asyncio.get_running_loop()
        idle_deadline = None if timeout_ms is None else loop.time() + timeout_ms / 1000
        value_only = _VALUE_FORMATTERS.get(fmt)
        while max_messages is None or count < max_messages:
            wait_ms = 1000 if idle_deadline is None else max(
                0, int((idle_deadline - loop.time()) * 1000))
            if value_only is not None and max_messages is None:
                # values only, no record object per record (with --max-messages the
                # record path stops exactly at the limit: batches may go past it)
                got_values = await consumer.getmany_values(timeout_ms=wait_ms)
                if not got_values:
                    if idle_deadline is not None and loop.time() >= idle_deadline:
                        break
                    continue
                lines: list[str] = []
                for values in got_values.values():
                    lines += map(value_only, values)
                count += len(lines)
                write("\n".join(lines))
                if timeout_ms is not None:
                    idle_deadline = loop.time() + timeout_ms / 1000
                continue
            got = await consumer.getmany(timeout_ms=wait_ms,
                                         max_records=None if max_messages is None
                                         else max_messages - count)
            if not got:
                if idle_deadline is not None and loop.time() >= idle_deadline:
                    break
                continue
            lines = []
            for records in got.values():
                for r in records:
                    lines.append(format_record(r, fmt))
            count += len(lines)
            write("\n".join(lines))
            if timeout_ms is not None:
                idle_deadline = loop.time() + timeout_ms / 1000
    return count


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               epilog=FORMATS_HELP)
@click.option("--bootstrap", "-b", required=True, metavar="HOST:PORT[,...]",
              help="any controllers or brokers of the cluster")
@click.option("--topic", "-t", required=True)
@click.option("--group", default=None, help="consume as a member of this consumer group")
@click.option("--from-beginning", is_flag=True, help="start at the earliest offset")
@click.option("--partition", type=int, default=None, help="only this partition")
@click.option("--offset", default=None, metavar="N|earliest|latest",
              help="start offset (with --partition for a number)")
@click.option("--max-messages", type=int, default=None, help="exit after this many records")
@click.option("--timeout-ms", type=click.IntRange(min=0), default=None,
              help="exit when no record arrives for this long")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text",
              show_default=True,
              help="text (alias value), key-value, hex, base64 or json; see below")
@command_config_option
def _consume_command(bootstrap: str, topic: str, group: str | None, from_beginning: bool,
                     partition: int | None, offset: str | None, max_messages: int | None,
                     timeout_ms: int | None, fmt: str) -> None:
    """Print the records of a topic as they arrive."""
    if offset is not None and offset not in ("earliest", "latest"):
        if not (offset.isascii() and offset.isdigit()) or int(offset) > MAX_OFFSET:
            raise click.UsageError(f"--offset must be a number from 0 to {MAX_OFFSET}, "
                                   f"earliest or latest; got {offset!r}")
        if partition is None:
            raise click.UsageError("--offset N needs --partition")
    if max_messages is not None and max_messages < 1:
        raise click.UsageError("--max-messages must be at least 1")
    if group is not None and (partition is not None or offset is not None):
        raise click.UsageError("--group cannot be combined with --partition/--offset")
    _check_bootstrap(bootstrap)
    _utf8_text("--topic", topic)
    if group is not None:
        if not group:
            raise click.UsageError("--group must not be empty")
        _utf8_text("--group", group)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # text formats may print U+FFFD: a terminal whose encoding lacks it shows "?"
        sys.stdout.reconfigure(errors="replace")

    def write(text: str) -> None:
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            raise ToolError("output closed", 0) from None

    count = _run(consume(bootstrap, topic, from_beginning, partition, offset, max_messages,
                         timeout_ms, fmt, write, group=group))
    click.echo(f"processed a total of {count} messages", err=True)


def consume_main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of `dmq-consume`."""
    _run_tool(_consume_command, argv)


__all__ = ["consume", "consume_main", "format_record", "produce", "produce_main"]
