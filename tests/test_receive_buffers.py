"""Receive buffers are mapped in before data arrives (docs/architecture.md#transfer-speed):
a large one is resident as soon as it is made, so the copy of each received frame into it
takes no page faults on the gRPC handler thread."""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest

from swarmnode.canonical import CHUNK_ELEMENTS
from swarmnode.p2p.buffers import MAPPED_MIN_BYTES, receive_buffer, reuse_freed_memory
from swarmnode.p2p.inbox import Inbox


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.parametrize("elements", [0, 1, 1000, MAPPED_MIN_BYTES // 4 - 1])
def test_a_small_buffer_is_a_plain_writable_float32_array(elements: int) -> None:
    buffer = receive_buffer(elements)
    assert buffer.dtype == np.float32 and buffer.shape == (elements,)
    buffer[:] = 1.5
    assert np.all(buffer == 1.5)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_a_large_buffer_is_resident_before_anything_is_written_to_it() -> None:
    nbytes = 64 << 20
    before = _resident_bytes()
    buffer = receive_buffer(nbytes // 4)
    grown = _resident_bytes() - before
    assert grown >= nbytes * 0.9, f"only {grown / 2**20:.1f} MiB of 64 MiB mapped in"
    assert buffer.flags.writeable and buffer.dtype == np.float32 and len(buffer) == nbytes // 4
    faults = _faults()
    buffer[:] = 3.0  # a scalar: no temporary array of its own
    # 64 MiB is 16,384 pages of 4 KiB or 32 huge pages: written now, it takes (nearly) none
    assert _faults() - faults < 16, f"{_faults() - faults} page faults writing a mapped buffer"
    assert buffer[12345] == 3.0 and buffer[-1] == 3.0


def test_the_inbox_makes_its_stream_buffers_resident_before_data_arrives() -> None:
    inbox = Inbox("0x" + "11" * 20)
    sender = "0x" + "22" * 20
    numel = 4 * (MAPPED_MIN_BYTES // 4)  # 4 x the threshold: a mapped buffer
    chunks = range(-(-numel // CHUNK_ELEMENTS))
    inbox.expect_updates(1, {0: chunks}, numel, {sender: b"\0" * 32})
    inbox.update(1, sender, 0, timeout=0)  # makes the stream's buffer, as a round does
    (stream,) = inbox._updates[1].streams.values()
    assert stream.buffer.nbytes == numel * 4 and stream.buffer.flags.writeable
    faults = _faults()
    stream.buffer[:] = 2.0  # what the frames' copies will do
    assert _faults() - faults < 16, f"{_faults() - faults} page faults filling the buffer"


def test_reuse_freed_memory_is_idempotent() -> None:
    first = reuse_freed_memory()
    assert reuse_freed_memory() == first
