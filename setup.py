"""Build hook: the wheel carries the JSON Schemas of the repository's top-level `schemas/`.

`schemas/` stays the one source (documentation and editors point at it); `build_py` copies it
into `gitorch/schemas/` of the build, so no copy lives in the tree to keep in sync by hand.
Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SCHEMAS = Path(__file__).resolve().parent / "schemas"


class BuildWithSchemas(build_py):
    """build_py, plus schemas/*.json as package data of `gitorch` (gitorch/schemas/)."""

    def run(self) -> None:
        super().run()
        if not SCHEMAS.is_dir():
            raise SystemExit(f"{SCHEMAS}: missing; build gitorch from a checkout or its sdist")
        target = Path(self.build_lib) / "gitorch" / "schemas"
        target.mkdir(parents=True, exist_ok=True)
        for schema in sorted(SCHEMAS.glob("*.json")):
            shutil.copyfile(schema, target / schema.name)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        # Listed so that editable installs in strict mode and `bdist_wheel` see them too.
        target = Path(self.build_lib) / "gitorch" / "schemas"
        return [*super().get_outputs(include_bytecode), *(str(target / s.name) for s in sorted(SCHEMAS.glob("*.json")))]


setup(cmdclass={"build_py": BuildWithSchemas})
