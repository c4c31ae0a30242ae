"""dmq.raft"""
