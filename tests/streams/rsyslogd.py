"""Debian's rsyslogd, started by a test with a config in a folder of its own: imtcp with
octet-counted framing (plain, or TLS with the gtls driver) and a template writing what rsyslog
parsed of each message, one line each, to a file the test reads back."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
SEP = "\x1f|"  # between the properties in a line of the output file
WAIT_SECONDS = 30.0  # the most a test waits for rsyslogd to start or to write (not a timing assertion)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Rsyslog:
    """One rsyslogd on 127.0.0.1:port, writing to ``out``; restartable on the same port."""

    def __init__(self, directory: Path, port: int, tls: tuple[Path, Path, Path] | None, config: str | None = None) -> None:
        """``config``: rsyslog.conf statements to run instead of the fields-to-``out`` ones (a workDirectory is added)."""
        self.directory = directory
        self.port = port
        self.out = directory / "out.log"
        self.conf = directory / "rsyslog.conf"
        (directory / "work").mkdir(exist_ok=True)
        driver = ""
        module = 'module(load="imtcp")'
        if tls is not None:
            ca, cert, key = tls
            driver = f'global(defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{cert}" defaultNetstreamDriverKeyFile="{key}")\n'
            module = 'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")'
        properties = ["timereported:::date-rfc3339", "pri", "hostname", "app-name", "procid", "msgid", "structured-data", "msg"]
        line = SEP.join(f"%{name}%" for name in properties)
        self.conf.write_text(
            f'global(workDirectory="{directory / "work"}" maxMessageSize="64k")\n'
            f"{driver}{module}\n"
            f'template(name="fields" type="string" string="{line}\\n")\n'
            f'input(type="imtcp" port="{port}" address="127.0.0.1" supportOctetCountedFraming="on" ruleset="keep")\n'
            f'ruleset(name="keep") {{ action(type="omfile" file="{self.out}" template="fields") }}\n'
        )
        if config is not None:
            self.conf.write_text(f'global(workDirectory="{directory / "work"}")\n{config}')
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.directory / "rsyslogd.stderr").open("ab")
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.directory / "rsyslogd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"rsyslogd exited: {(self.directory / 'rsyslogd.stderr').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("rsyslogd does not listen") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(WAIT_SECONDS)
        self.process = None

    def lines(self, count: int) -> list[list[str]]:
        """The first ``count`` messages rsyslogd wrote, each as its properties."""
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            text = self.out.read_text("utf-8") if self.out.exists() else ""
            lines = text.splitlines()
            if len(lines) >= count or time.monotonic() > deadline:
                return [line.split(SEP) for line in lines]
            time.sleep(0.05)
