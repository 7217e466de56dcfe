"""One side of one transport_benchmark.py case, run in its own fresh OS process.

Run by transport_benchmark.py only: `python simulations/_bench_peer.py send|receive`. The
parent speaks JSON lines over this process's stdin and stdout (stdout carries nothing else);
errors go back as {"error": traceback} and the process exits non-zero.

The receiver binds 127.0.0.1 port 0 and reports the port; the sender allocates and hashes
its payload, then connects when the parent hands it the port. Both report monotonic
(CLOCK_MONOTONIC, shared by every process on the machine) timestamps, CPU time, per-thread
CPU time, page faults, machine-wide CPU (to spot other load), and memory: the peak RSS
(VmHWM, see peak_rss_kib) and the RSS just before the payload (the sender's vector, the
receiver's buffer) was allocated.

The swarmnode receiver also times, without changing swarmnode, the functions its Inbox calls
per frame (verify_chunks, the chunk hashing and finiteness check inside it, the copy into the
segment buffer) by wrapping them in this process; every check stays on.

The grpc-stock case is stock gRPC with mutual TLS and nothing of swarmnode's on the wire:
a stream-unary call of plain `bytes` messages, each the size of one swarmnode frame's
payload, copied by the receiver into a buffer preallocated (and touched, like the raw
cases') for the payload. No hashes, no checks: the ceiling a gRPC transport can reach.
"""

from __future__ import annotations

import contextlib
import cProfile
import ctypes
import hashlib
import io
import json
import os
import pstats
import re
import resource
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROUND = 1
SEGMENT = 0
BLOCK_ELEMENTS = 1 << 22  # 16 MiB of random float32, repeated to fill the payload
SAMPLE_STRIDE = 4099  # one byte in every 4099 goes into the end-to-end spot check
TRANSFER_TIMEOUT = 300.0
RAW_CASES = ("tcp", "tls")
GRPC_CASES = ("grpc-mtls", "grpc-plain")
STOCK_CASE = "grpc-stock"
STOCK_PLAIN_CASE = "grpc-stock-plain"  # the same without TLS: the no-TLS ceiling
STOCK_CASES = (STOCK_CASE, STOCK_PLAIN_CASE)
STOCK_METHOD = "/bench.Stock/Push"

# ------------------------------------------------------------------------------ plumbing


def send_message(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def receive_message() -> dict[str, Any]:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("the benchmark parent went away")
    message: dict[str, Any] = json.loads(line)
    return message


def rss_kib() -> int:
    """The current resident set size (KiB), from /proc/self/statm."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kib() -> int:
    """This process's own peak resident set size so far (KiB): VmHWM, /proc/self/status.

    Not ru_maxrss: Linux carries the peak RSS of the image an exec replaces into the new
    program's ru_maxrss, and subprocess execs the child from a copy of the parent (which
    has torch loaded), so a small child starts with the parent's peak (a raw-socket sender
    showed 2.0 x a 100 MB payload). VmHWM is the same high-water mark for this image only;
    ru_maxrss is reported beside it (maxrss_kib) for comparison.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # glibc's struct mallinfo2 (malloc.h, glibc 2.33+)
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_kib() -> dict[str, int]:
    """glibc's malloc totals over every arena (KiB): heap (arena: obtained from the
    kernel by brk or per-thread heaps), mapped (hblkhd: blocks served by mmap), in_use
    and free (free but kept, resident if touched); empty where mallinfo2 is missing.
    Where the receiver's memory beyond the payload sits at the end of a transfer."""
    try:
        libc = ctypes.CDLL(None)
        function = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    function.restype = _MallInfo2
    info = function()
    return {
        "heap": info.arena // 1024,
        "mapped": info.hblkhd // 1024,
        "in_use": info.uordblks // 1024,
        "free": info.fordblks // 1024,
    }


def maxrss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat: what every
    process did (the other sessions on this shared machine too), and the time the hypervisor
    took the virtual CPUs away."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def page_faults() -> int:
    """Page faults of this process so far (minor + major): a fresh buffer's first touch."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of every thread of this process, by thread id, with a label:
    the Python thread name with digits folded to N (several workers share one label), or the
    OS name of a native thread (gRPC's C-core threads)."""
    ticks = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        tid = int(entry)
        label = names.get(tid, comm)
        label = "main" if label == "MainThread" else re.sub(r"\d+", "N", label)
        out[tid] = (label, seconds)
    return out


def thread_cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], total: float
) -> dict[str, float]:
    """CPU seconds per thread label between two thread_cpu() readings; threads that started
    and ended in between count as "exited" (the rest of the process's `total`)."""
    totals: dict[str, float] = {}
    for tid, (label, seconds) in after.items():
        spent = seconds - before.get(tid, (label, 0.0))[1]
        if spent > 0:
            totals[label] = totals.get(label, 0.0) + spent
    exited = total - sum(totals.values())
    if exited > 0.01:
        totals["exited"] = exited
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def sample_digest(buffer: npt.NDArray[Any]) -> str:
    """A cheap end-to-end spot check: SHA-256 of every SAMPLE_STRIDE-th byte."""
    data = buffer.view(np.uint8)
    return hashlib.sha256(data[::SAMPLE_STRIDE].tobytes()).hexdigest()


class Timer:
    """Wall time spent inside wrapped functions, summed over calls and threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                with self._lock:
                    self.seconds[name] = self.seconds.get(name, 0.0) + spent
                    self.calls[name] = self.calls.get(name, 0) + 1

        return timed


class ThreadProfiles:
    """cProfile in every thread started from now on (the gRPC server's polling thread and its
    handler workers); each profile is kept once its thread ends."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, cProfile.Profile]] = []
        self._lock = threading.Lock()
        original = threading.Thread.run

        def run(thread: threading.Thread) -> None:
            profile = cProfile.Profile()
            profile.enable()
            try:
                original(thread)
            finally:
                profile.disable()
                with self._lock:
                    self.finished.append((thread.name, profile))

        threading.Thread.run = run  # type: ignore[method-assign, assignment]

    def report(self, lines: int = 18) -> str:
        out = io.StringIO()
        with self._lock:
            finished = list(self.finished)
        for name, profile in finished:
            stats = pstats.Stats(profile, stream=out)
            total = float(getattr(stats, "total_tt", 0.0))
            if total < 0.05:  # idle threads
                continue
            out.write(f"--- thread {name}: {total:.2f} s profiled\n")
            stats.sort_stats("tottime").print_stats(lines)
        return re.sub(r"\n{3,}", "\n\n", out.getvalue())


# ------------------------------------------------------------------------------ TLS files


def tls_context(config: dict[str, Any], *, server: bool, folder: Path) -> ssl.SSLContext:
    """Python's ssl with the nodes' own key and self-signed certificate; the peer must present
    exactly its registered certificate (client certificates required)."""
    me, peer = config["me"], config["peer"]
    key = folder / "key.pem"
    cert = folder / "cert.pem"
    key.touch(mode=0o600)
    key.write_text(me["key_pem"])
    cert.write_text(me["cert_pem"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cadata=peer["cert_pem"])
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# ------------------------------------------------------------------------------ gRPC nodes


def grpc_parts(case: str) -> tuple[Any, Any]:
    """(server factory, transport factory) for a gRPC case. The mTLS case is swarmnode's own
    PeerServer and GrpcTransport. PeerServer only serves on a secure port and authenticates
    every call from the TLS auth context, so the plain case subclasses both: an insecure port
    and channel, and the one expected sender in place of the certificate lookup. Handlers,
    codec, Inbox and the push path are the same code."""
    import grpc

    from swarmnode.p2p.buffers import reuse_freed_memory
    from swarmnode.p2p.grpc_transport import CHANNEL_OPTIONS, GrpcTransport, PeerServer

    if case == "grpc-mtls":
        return PeerServer, GrpcTransport

    class PlainPeerServer(PeerServer):
        def __init__(
            self,
            account: str,
            key_pem: bytes,
            cert_pem: bytes,
            roster: Any,
            inbox: Any,
            *,
            host: str = "127.0.0.1",
            port: int = 0,
            workers: int = 8,
        ) -> None:
            self.account = account
            self._roster = roster
            self._inbox = inbox
            self._current_round = lambda: 0
            self._served_version = -1
            self._serving = True
            (self._sender,) = (r.account for r in roster.records())
            reuse_freed_memory()  # as PeerServer.__init__ does
            self._server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="peer"),
                options=CHANNEL_OPTIONS,
            )
            self._server.add_generic_rpc_handlers((self._handlers(),))
            self.port = self._server.add_insecure_port(f"{host}:{port}")
            self.endpoint = f"{host}:{self.port}"

        def _authenticate(self, context: grpc.ServicerContext) -> str:
            return str(self._sender)

    class PlainTransport(GrpcTransport):
        def _channel(self, peer: str) -> grpc.Channel:
            record = self._roster.get(peer)
            assert record is not None
            with self._lock:
                cached = self._channels.get(peer.lower())
                if cached is None:
                    channel = grpc.insecure_channel(record.endpoint, options=CHANNEL_OPTIONS)
                    cached = (record, channel)
                    self._channels[peer.lower()] = cached
                return cached[1]

    return PlainPeerServer, PlainTransport


# ------------------------------------------------------------------------------ receiver


def receive(config: dict[str, Any]) -> None:
    case, nbytes = config["case"], int(config["nbytes"])
    if case in RAW_CASES:
        receive_raw(config, case, nbytes)
    elif case in STOCK_CASES:
        receive_stock(config, nbytes)
    else:
        receive_grpc(config, case, nbytes)


def receive_raw(config: dict[str, Any], case: str, nbytes: int) -> None:
    with tempfile.TemporaryDirectory() as folder, socket.socket() as listener:
        context = tls_context(config, server=True, folder=Path(folder)) if case == "tls" else None
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        send_message({"port": listener.getsockname()[1]})
        receive_message()  # the sender is ready
        base = rss_kib()
        buffer = np.empty(nbytes, dtype=np.uint8)  # allocated like the Inbox's segment buffer
        if config.get("prefault"):
            buffer.fill(0)
        view = buffer.data
        send_message({"armed": True})
        listener.settimeout(TRANSFER_TIMEOUT)
        raw, _ = listener.accept()
        raw.settimeout(TRANSFER_TIMEOUT)
        with raw:
            conn: socket.socket = raw
            if context is not None:
                conn = context.wrap_socket(raw, server_side=True)
            cipher = conn.cipher() if isinstance(conn, ssl.SSLSocket) else None
            threads0, cpu0, faults0 = thread_cpu(), cpu_seconds(), page_faults()
            received = 0
            while received < nbytes:
                count = conn.recv_into(view[received:])
                if not count:
                    raise ConnectionError(f"the sender closed after {received} bytes")
                received += count
            t_end = time.monotonic()
            machine = machine_cpu()
            cpu = cpu_seconds() - cpu0
            faults = page_faults() - faults0
            threads = thread_cpu_delta(threads0, thread_cpu(), cpu)
            conn.sendall(b"\x01")  # the sender's acknowledgement
            send_message(
                {
                    "t_end": t_end,
                    "cpu": cpu,
                    "faults": faults,
                    "threads": threads,
                    "base_kib": base,
                    "peak_kib": peak_rss_kib(),
                    "maxrss_kib": maxrss_kib(),
                    "machine": machine,
                    "sample": sample_digest(buffer),
                    "cipher": cipher[0] if cipher else None,
                    "tls_version": cipher[1] if cipher else None,
                }
            )
            if isinstance(conn, ssl.SSLSocket):
                conn.close()
    sys.stdin.read()  # until the parent closes the pipe


def receive_grpc(config: dict[str, Any], case: str, nbytes: int) -> None:
    profiles = ThreadProfiles() if config.get("profile") else None
    import swarmnode.canonical as canonical
    import swarmnode.p2p.frames as frames_module
    import swarmnode.p2p.inbox as inbox_module
    from swarmnode import merkle
    from swarmnode.p2p.inbox import Inbox, _Segment
    from swarmnode.p2p.roster import PeerRecord, Roster

    server_class, _ = grpc_parts(case)
    me, peer = config["me"], config["peer"]
    numel = nbytes // 4
    # The first frame's header carries the whole vector's chunk-hash list (32 bytes per
    # 16 KiB). If a build's frames.MAX_HEADER_BYTES is below that, lift it in this process
    # just enough for the list (unless told to run as committed), and say so.
    header_limit = None
    list_bytes = canonical.HASH_BYTES * canonical.num_chunks(numel)
    if config.get("lift_header_limit") and list_bytes + 4096 > frames_module.MAX_HEADER_BYTES:
        header_limit = list_bytes + 4096
        frames_module.MAX_HEADER_BYTES = header_limit
    roster = Roster([PeerRecord(peer["account"], "127.0.0.1:9", bytes.fromhex(peer["cert_der"]))])
    inbox = Inbox(me["account"])
    server = server_class(
        me["account"], me["key_pem"].encode(), me["cert_pem"].encode(), roster, inbox
    ).start()
    try:
        send_message({"port": server.port})
        digest = bytes.fromhex(receive_message()["digest"])

        # Time spent in the receiver's checks, without touching swarmnode: wrap the functions
        # its Inbox calls (a frame's chunk hashes by name in inbox.py and the Merkle proof
        # check in merkle.py; hashing and finiteness by name in canonical.py) and the copy
        # into the segment buffer.
        timer = Timer()
        inbox_module.chunk_hashes = timer.wrap(  # type: ignore[attr-defined]
            "frame_hashes", inbox_module.chunk_hashes
        )
        merkle.verify_range = timer.wrap("verify", merkle.verify_range)
        canonical._hash_chunks = timer.wrap("hash", canonical._hash_chunks)
        canonical.check_finite = timer.wrap("finite", canonical.check_finite)
        _Segment.store = timer.wrap("store", _Segment.store)  # type: ignore[method-assign]
        Inbox.receive = timer.wrap("receive", Inbox.receive)  # type: ignore[method-assign]

        base = rss_kib()
        base_malloc = heap_kib()
        chunks = range(canonical.num_chunks(numel))
        # The Inbox allocates (and, where swarmnode does so, touches) its buffers as it would
        # in a round: the benchmark does not prefault them for it (docs/architecture.md).
        inbox.expect_updates(ROUND, {SEGMENT: chunks}, numel, {peer["account"]: digest})
        inbox.update(ROUND, peer["account"], SEGMENT, timeout=0)  # the stream's buffer, now
        threads0, cpu0, faults0 = thread_cpu(), cpu_seconds(), page_faults()
        send_message({"armed": True})
        got = inbox.update(ROUND, peer["account"], SEGMENT, timeout=TRANSFER_TIMEOUT)
        t_end = time.monotonic()
        machine = machine_cpu()
        cpu = cpu_seconds() - cpu0
        faults = page_faults() - faults0
        threads = thread_cpu_delta(threads0, thread_cpu(), cpu)
        if got is None:
            raise TimeoutError(f"the update did not arrive whole (refused: {inbox.refused})")
        send_message(
            {
                "t_end": t_end,
                "cpu": cpu,
                "faults": faults,
                "threads": threads,
                "base_kib": base,
                "peak_kib": peak_rss_kib(),
                "maxrss_kib": maxrss_kib(),
                "end_kib": rss_kib(),
                "malloc_kib": heap_kib(),
                "base_malloc_kib": base_malloc,
                "machine": machine,
                "sample": sample_digest(got),
                "refused": inbox.refused,
                "header_limit": header_limit,
                "timers": timer.seconds,
                "calls": timer.calls,
            }
        )
        sys.stdin.readline()  # the sender has its acknowledgement: the parent says stop
    finally:
        server.stop(0.5)
    if profiles is not None:
        server._server._state.thread_pool.shutdown(wait=True)  # the workers' profiles end
        send_message({"profile": profiles.report()})
    sys.stdin.read()


# ------------------------------------------------------------------------------ sender


def payload(nbytes: int, seed: int, base: list[int]) -> npt.NDArray[np.float32]:
    """`nbytes` of finite float32 (a 16 MiB random block, repeated); `base` gets the RSS just
    before the vector is allocated."""
    numel = nbytes // 4
    block = np.random.default_rng(seed).standard_normal(min(numel, BLOCK_ELEMENTS), np.float32)
    base.append(rss_kib())
    vector = np.empty(numel, dtype=np.float32)
    for start in range(0, numel, len(block)):
        stop = min(start + len(block), numel)
        vector[start:stop] = block[: stop - start]
    return vector


def send(config: dict[str, Any]) -> None:
    case, nbytes = config["case"], int(config["nbytes"])
    if case in RAW_CASES:
        send_raw(config, case, nbytes)
    elif case in STOCK_CASES:
        send_stock(config, nbytes)
    else:
        send_grpc(config, case, nbytes)


def send_raw(config: dict[str, Any], case: str, nbytes: int) -> None:
    base: list[int] = []
    vector = payload(nbytes, int(config["seed"]), base)
    data = vector.view(np.uint8).data
    send_message({"ready": True, "digest": "", "sample": sample_digest(vector)})
    port = int(receive_message()["port"])
    with tempfile.TemporaryDirectory() as folder:
        context = tls_context(config, server=False, folder=Path(folder)) if case == "tls" else None
        raw = socket.create_connection(("127.0.0.1", port), timeout=TRANSFER_TIMEOUT)
        with raw:
            conn: socket.socket = raw
            if context is not None:
                conn = context.wrap_socket(raw, server_hostname=config["peer"]["account"].lower())
            threads0, cpu0, faults0 = thread_cpu(), cpu_seconds(), page_faults()
            machine = machine_cpu()
            t0 = time.monotonic()
            conn.sendall(data)
            t_sent = time.monotonic()
            if conn.recv(1) != b"\x01":
                raise ConnectionError("no acknowledgement from the receiver")
            t_ack = time.monotonic()
            cpu = cpu_seconds() - cpu0
            faults = page_faults() - faults0
            threads = thread_cpu_delta(threads0, thread_cpu(), cpu)
            if isinstance(conn, ssl.SSLSocket):
                conn.close()
    send_message(
        {
            "t0": t0,
            "t_sent": t_sent,
            "t_ack": t_ack,
            "cpu": cpu,
            "faults": faults,
            "threads": threads,
            "base_kib": base[0],
            "peak_kib": peak_rss_kib(),
            "maxrss_kib": maxrss_kib(),
            "machine": machine,
        }
    )


def send_grpc(config: dict[str, Any], case: str, nbytes: int) -> None:
    import swarmnode.canonical as canonical
    from swarmnode import merkle
    from swarmnode.p2p.frames import Frame, frames_for
    from swarmnode.p2p.messages import Kind
    from swarmnode.p2p.roster import PeerRecord, Roster

    _, transport_class = grpc_parts(case)

    me, peer = config["me"], config["peer"]
    base: list[int] = []
    vector = payload(nbytes, int(config["seed"]), base)
    hashes = canonical.chunk_hashes(vector)  # the commitment is made before the round
    digest = canonical.digest_from_chunk_hashes(hashes)
    tree = merkle.Tree(hashes)  # as a node keeps it: every frame proves its own chunks
    send_message({"ready": True, "digest": digest.hex(), "sample": sample_digest(vector)})
    port = int(receive_message()["port"])
    record = PeerRecord(peer["account"], f"127.0.0.1:{port}", bytes.fromhex(peer["cert_der"]))
    transport = transport_class(
        me["account"], me["key_pem"].encode(), me["cert_pem"].encode(), Roster([record])
    )
    chunks = range(canonical.num_chunks(len(vector)))
    frame_chunks = int(config["frame_chunks"])

    def frames() -> Iterator[Frame]:
        return frames_for(
            vector,
            chunks,
            kind=Kind.UPDATE,
            round=ROUND,
            attempt=1,
            segment=SEGMENT,
            sender=me["account"],
            prove=tree.proof,
            frame_chunks=frame_chunks,
        )

    try:
        transport.info(peer["account"], timeout=30)  # connect and handshake before timing
        threads0, cpu0, faults0 = thread_cpu(), cpu_seconds(), page_faults()
        machine = machine_cpu()
        t0 = time.monotonic()
        elements = transport.push(peer["account"], frames, timeout=TRANSFER_TIMEOUT)
        t_ack = time.monotonic()
        cpu = cpu_seconds() - cpu0
        faults = page_faults() - faults0
        threads = thread_cpu_delta(threads0, thread_cpu(), cpu)
    finally:
        transport.close()
    if elements != len(vector):
        raise RuntimeError(f"the receiver accepted {elements} of {len(vector)} elements")
    send_message(
        {
            "t0": t0,
            "t_sent": t_ack,
            "t_ack": t_ack,
            "cpu": cpu,
            "faults": faults,
            "threads": threads,
            "base_kib": base[0],
            "peak_kib": peak_rss_kib(),
            "maxrss_kib": maxrss_kib(),
            "machine": machine,
        }
    )


# ------------------------------------------------------------------------------ stock gRPC


def stock_credentials(config: dict[str, Any], *, server: bool) -> Any:
    """Stock gRPC mutual TLS with the nodes' own certificates: each side trusts exactly the
    other's self-signed certificate, the server requires a client certificate."""
    import grpc

    me, peer = config["me"], config["peer"]
    key, cert, root = me["key_pem"].encode(), me["cert_pem"].encode(), peer["cert_pem"].encode()
    if server:
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=root, require_client_auth=True
        )
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )


def stock_options() -> list[tuple[str, Any]]:
    """The channel options swarmnode's own transport uses (its best effort), so that the
    ratio to this case measures swarmnode's code, not a different setting."""
    from swarmnode.p2p.grpc_transport import CHANNEL_OPTIONS

    return list(CHANNEL_OPTIONS)


def receive_stock(config: dict[str, Any], nbytes: int) -> None:
    import grpc

    base = rss_kib()
    base_malloc = heap_kib()
    buffer = np.empty(nbytes, dtype=np.uint8)
    if config.get("prefault"):
        buffer.fill(0)
    done = threading.Event()
    state = {"received": 0}

    def push(messages: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        for message in messages:
            at = state["received"]
            buffer[at : at + len(message)] = np.frombuffer(message, dtype=np.uint8)
            state["received"] = at + len(message)
        if state["received"] == nbytes:
            done.set()
        return b""

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="peer"),
        options=stock_options(),
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Stock", {"Push": grpc.stream_unary_rpc_method_handler(push)}
            ),
        )
    )
    if config["case"] == STOCK_PLAIN_CASE:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", stock_credentials(config, server=True))
    server.start()
    try:
        send_message({"port": port})
        receive_message()  # the sender is ready
        threads0, cpu0, faults0 = thread_cpu(), cpu_seconds(), page_faults()
        send_message({"armed": True})
        if not done.wait(TRANSFER_TIMEOUT):
            raise TimeoutError(f"{state['received']} of {nbytes} bytes arrived")
        t_end = time.monotonic()
        machine = machine_cpu()
        cpu = cpu_seconds() - cpu0
        faults = page_faults() - faults0
        threads = thread_cpu_delta(threads0, thread_cpu(), cpu)
        send_message(
            {
                "t_end": t_end,
                "cpu": cpu,
                "faults": faults,
                "threads": threads,
                "base_kib": base,
                "peak_kib": peak_rss_kib(),
                "maxrss_kib": maxrss_kib(),
                "end_kib": rss_kib(),
                "malloc_kib": heap_kib(),
                "base_malloc_kib": base_malloc,
                "machine": machine,
                "sample": sample_digest(buffer),
            }
        )
        sys.stdin.readline()  # the sender has its acknowledgement: the parent says stop
    finally:
        server.stop(0.5).wait()
    sys.stdin.read()


def send_stock(config: dict[str, Any], nbytes: int) -> None:
    import grpc

    base: list[int] = []
    vector = payload(nbytes, int(config["seed"]), base)
    data = vector.view(np.uint8)
    send_message({"ready": True, "digest": "", "sample": sample_digest(vector)})
    port = int(receive_message()["port"])
    size = int(config["frame_chunks"]) * 16384  # one swarmnode frame's payload

    def messages() -> Iterator[bytes]:
        for start in range(0, nbytes, size):
            yield data[start : start + size].tobytes()  # bytes, as stock gRPC takes them

    name = config["peer"]["account"].lower()  # the DNS name in its certificate
    options = [*stock_options(), ("grpc.ssl_target_name_override", name)]
    if config["case"] == STOCK_PLAIN_CASE:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=stock_options())
    else:
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}", stock_credentials(config, server=False), options=options
        )
    try:
        grpc.channel_ready_future(channel).result(timeout=30)  # connected, handshake done
        call = channel.stream_unary(STOCK_METHOD)
        threads0, cpu0, faults0 = thread_cpu(), cpu_seconds(), page_faults()
        machine = machine_cpu()
        t0 = time.monotonic()
        call(messages(), timeout=TRANSFER_TIMEOUT)
        t_ack = time.monotonic()
        cpu = cpu_seconds() - cpu0
        faults = page_faults() - faults0
        threads = thread_cpu_delta(threads0, thread_cpu(), cpu)
    finally:
        channel.close()
    send_message(
        {
            "t0": t0,
            "t_sent": t_ack,
            "t_ack": t_ack,
            "cpu": cpu,
            "faults": faults,
            "threads": threads,
            "base_kib": base[0],
            "peak_kib": peak_rss_kib(),
            "maxrss_kib": maxrss_kib(),
            "machine": machine,
        }
    )


def main() -> int:
    role = sys.argv[1]
    try:
        config = receive_message()
        if config["case"] in (*GRPC_CASES, *STOCK_CASES):  # import before any baseline is taken
            import swarmnode.p2p.grpc_transport as grpc_transport

            # --grpc-option: extra channel/server options for an experiment, in this process
            extra = [(str(name), value) for name, value in config.get("grpc_options", [])]
            names = {name for name, _ in extra}
            grpc_transport.CHANNEL_OPTIONS = [
                *(kept for kept in grpc_transport.CHANNEL_OPTIONS if kept[0] not in names),
                *extra,
            ]
            if config.get("read_ahead") is not None:  # --read-ahead: frames read ahead
                grpc_transport.READ_AHEAD_FRAMES = int(config["read_ahead"])
        (receive if role == "receive" else send)(config)
    except BaseException:
        with contextlib.suppress(OSError):  # unless the parent is gone
            send_message({"error": f"{role}: {traceback.format_exc()}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
