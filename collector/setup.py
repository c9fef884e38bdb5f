"""Build hook: ship the repository's catalogs/ and config/ inside the wheel.

The canonical copies live at the repository root (catalogs/, config/) so that operators
and reviewers find them there; the collector needs them installed beside its code so that
`pip install ./collector && otaudit serve` works with no checkout at run time.

Also builds the optional C decoder for OTLP/protobuf requests (``core/_otlp_decode.c``).
It is optional: without a C compiler the install still succeeds and the collector uses
the Python decoder (``otlp_proto.decode_protobuf_python``).
"""

import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUNDLED = {"catalogs": HERE.parent / "catalogs", "config": HERE.parent / "config"}


class BuildWithBundledData(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "otaudit_collector" / "_bundled"
        for name, source in BUNDLED.items():
            if not source.is_dir():
                raise SystemExit(f"cannot bundle {name}: {source} is missing (build from a full checkout)")
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("*.md", "__pycache__"))


OTLP_DECODE = Extension(
    "otaudit_collector.core._otlp_decode",
    ["otaudit_collector/core/_otlp_decode.c"],
    optional=True,
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
)

setup(cmdclass={"build_py": BuildWithBundledData}, ext_modules=[OTLP_DECODE])
