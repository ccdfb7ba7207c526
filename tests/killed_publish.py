"""A test helper: publish files the way the commands do, in a process that can be SIGKILLed before any
rename of the publish (stoneseg.files.KILL_BEFORE_RENAME)."""

import os
import subprocess
import sys
from pathlib import Path

from stoneseg import files

REPO = Path(__file__).resolve().parents[1]
NEW_SET = {"a": "new a", "b": "new b", "index": "new index"}

# "folder": ROOT/report is replaced whole by a folder holding new.csv (as evaluate and make_sample do);
# "set": NEW_SET is swapped in for the files in ROOT/set, the index leaving first and arriving last
# (as build_records swaps records).
PUBLISHER = """
import sys
from pathlib import Path
from stoneseg import files
kind, target = sys.argv[1], Path(sys.argv[2])
if kind == "folder":
    with files.staged_folder(target, overwrite=True) as folder:
        (folder / "new.csv").write_text("new")
else:
    with files.staging_folder(target, "set") as staging:
        for name, text in %r.items():
            (staging / name).write_text(text)
        old = sorted(target.glob("[!.]*"), key=lambda path: path.name != "index")
        files.replace_files(staging, old, ["a", "b", "index"])
""" % NEW_SET


def publish_in_a_process(kind: str, target: Path, kill_before_rename: int | None = None) -> int:
    """Run the publish of `kind` onto `target`; returns the exit status (-SIGKILL when killed)."""
    env = dict(os.environ)
    if kill_before_rename is not None:
        env[files.KILL_BEFORE_RENAME] = str(kill_before_rename)
    return subprocess.run([sys.executable, "-c", PUBLISHER, kind, str(target)], cwd=REPO, env=env,
                          timeout=60).returncode
