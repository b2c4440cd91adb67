"""Atomic writes: outputs are built under a temporary name and renamed into place.

A reader never sees a half-written file or folder, and a process killed mid-write leaves
what was there before intact.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

from .errors import UserError


def _explain_os_error(err, path):
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device while writing {path}; free some disk space and run again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write to {path} (permission denied or read-only); choose a writable output folder"
    return f"cannot write {path}: {err.strerror or err}; check the folder and run again"


def _fsync_dir(path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Every output folder textclf makes (a data set, a run, a prediction set) holds this file, naming
# its kind: `overwrite` replaces only folders that carry it.
MARKER = ".textclf"
# Every temporary folder names the process that writes it, so that a later run can tell a dead
# writer's leftovers from a live one's work in progress.
_OWNER = ".textclf-writer"


def write_marker(folder, kind):
    write_json(Path(folder) / MARKER, {"kind": kind})


def made_by_textclf(folder, kind):
    """Whether `folder` is a textclf output of `kind`: its marker says so. A file that textclf
    outputs also hold (meta.json, run.json) proves nothing: anyone can write one."""
    marker = Path(folder) / MARKER
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("kind") == kind
    except (OSError, ValueError, AttributeError):
        return False


def claim_folder(folder, kind):
    """Make `folder` with its marker in one step, or join it where textclf made it as a `kind`; whether it is
    ours. Several processes may claim one folder at once: each sees it absent or marked, never half made."""
    folder = Path(folder)
    if not folder.exists():
        tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            write_marker(tmp, kind)
            os.rename(tmp, folder)  # fails where another process's marked folder won the race
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if not folder.is_dir():
                raise UserError(_explain_os_error(err, folder.parent)) from None
    return made_by_textclf(folder, kind)


def replace_own_output(path, kind, key):
    """Remove `path` for `overwrite=true`, only if textclf made it as a `kind`; else refuse."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link to a missing folder; remove the link, or choose another name")
        return
    if not path.is_dir() or not made_by_textclf(path, kind):
        raise UserError(f"{path} exists and was not made by textclf as a {kind} folder, so {key}=true will not "
                        f"replace it; choose another name, or move it away yourself")
    remove_path(path)


def remove_path(path):
    """Remove a file or folder; a symbolic link is removed itself, never what it points at (which
    may lie outside the output folder)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(parent):
    """Remove the temporary folders in `parent` whose writer (a textclf process on this machine)
    is gone: what a killed stage left. Folders of live writers, and anything textclf did not
    make, are left alone. Returns how many were removed."""
    parent = Path(parent)
    removed = 0
    for tmp in parent.glob(".*.tmp-*") if parent.is_dir() else []:
        owner = tmp / _OWNER
        try:
            doc = json.loads(owner.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("host") == socket.gethostname() and not _alive(int(doc.get("pid", 0))):
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_dir(final_path, replace=False):
    """Yield a temporary folder beside `final_path`; rename it into place on success.

    With replace=False an existing `final_path` is an error (checked before and after).
    With replace=True the old folder is swapped out only once the new one is complete.
    """
    final_path = Path(final_path)
    if final_path.exists() and not replace:
        raise UserError(f"{final_path} already exists; choose another name or remove it")
    tmp = final_path.parent / f".{final_path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        (tmp / _OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}), encoding="utf-8")
    except OSError as err:
        raise UserError(_explain_os_error(err, final_path.parent)) from None
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final_path.exists():
            if not replace:
                raise UserError(f"{final_path} appeared while writing; choose another name")
            old = final_path.parent / f".{final_path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final_path, old)
            os.rename(tmp, final_path)
            with contextlib.suppress(OSError):
                remove_path(old)
        else:
            os.rename(tmp, final_path)
        (final_path / _OWNER).unlink(missing_ok=True)  # in place: no longer anyone's work in progress
        _fsync_dir(final_path.parent)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(_explain_os_error(err, final_path)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def versions(base, name, suffix=""):
    """Existing `<name><suffix>`, `<name>-v2<suffix>`, ... in `base`, oldest first, as [(version, path)]."""
    base = Path(base)
    pattern = re.compile(re.escape(name) + r"(?:-v(\d+))?" + re.escape(suffix))
    found = [(int(m.group(1) or 1), p) for p in (base.iterdir() if base.is_dir() else [])
             if (m := pattern.fullmatch(p.name))]
    return sorted(found)


def next_version(base, name, suffix="", also=()):
    """The path a new output takes: `<name><suffix>`, or one version past the newest existing one
    (also counting `<name>[-vN]<s>` for each suffix s in `also`: files written beside it)."""
    found = sorted(versions(base, name, suffix) + [v for s in also for v in versions(base, name, s)])
    return Path(base) / (f"{name}-v{found[-1][0] + 1}{suffix}" if found else f"{name}{suffix}")


def recover_dir(final_path):
    """Undo a replace that was cut between its two renames: bring back the old folder if the
    new one never arrived, and drop temporary folders left by a killed writer."""
    final_path = Path(final_path)
    parent = final_path.parent
    if not parent.is_dir():
        return
    olds = sorted(parent.glob(f".{final_path.name}.old-*"))
    if olds and not final_path.exists():
        os.rename(olds[-1], final_path)
        olds = olds[:-1]
    for stale in [*olds, *parent.glob(f".{final_path.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def atomic_write_bytes(path, data):
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(_explain_os_error(err, path)) from None


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def load_json(path, what, fix, required=None):
    """A JSON object from a file textclf wrote (run.json, meta.json, manifest.json, head.json, ...):
    a missing, corrupt or foreign file becomes one line naming the file, what it should be, and `fix`.
    `required` maps the keys that must be there to their type (or a tuple of types)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: it should hold {what}; {fix}") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        raise UserError(f"{path} is not valid JSON ({reason}): it should hold {what}; {fix}") from None
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror or err}): it should hold {what}; {fix}") from None
    required = required or {}
    if not isinstance(doc, dict):
        raise UserError(f"{path} is not {what} (it is not a JSON object); {fix}")
    missing = [k for k in required if k not in doc]
    wrong = [k for k, kind in required.items() if k in doc and not isinstance(doc[k], kind)]
    if missing or wrong:
        detail = f"it lacks {', '.join(missing)}" if missing else f"{', '.join(wrong)} has the wrong type"
        raise UserError(f"{path} is not {what} ({detail}); {fix}")
    return doc


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def ids_sha256(ids):
    """One hash of a list of row ids, in their order: two prediction sets of the same rows share it."""
    return hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()


def number_text(value):
    """A predicted number as CSV text: 7 significant digits (float32 holds about that many), never
    in exponent notation."""
    import numpy as np

    return np.format_float_positional(float(value), precision=7, unique=True, fractional=False, trim="-")


def folder_bytes(path):
    """The bytes of the files under `path` (a file: its size); links are not followed."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class OutputLock:
    """One writer per output folder: an exclusive lock (flock) held while a process writes it, so
    that a second writer of the same folder (an overwrite, a resume, a new run that picked the same
    name) is refused instead of mixing its files in. The lock files live in /tmp/textclf-locks-<uid>
    (one place whatever TMPDIR says), nothing beside the outputs; a folder is locked under its name
    (its parent's real path and its own name) and, where that differs, under its real path, so
    a/../b and a symbolic link to the folder meet the same lock. The operating system drops a lock
    when its process ends, however it ends. Without fcntl (Windows) there is no lock."""

    def __init__(self):
        self._handles = []

    @staticmethod
    def keys(output):
        """The paths a folder is locked under."""
        output = Path(os.path.normpath(Path(output).absolute()))
        named = os.path.join(os.path.realpath(output.parent), output.name)
        return sorted({named, os.path.realpath(output)})

    def take(self, output, what, then):
        """Lock `output` (a folder path) for this process; refuse if another process holds it (`then`:
        what to do once it has ended)."""
        try:
            import fcntl
        except ImportError:
            return
        import tempfile

        base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
        folder = base / f"textclf-locks-{os.getuid()}"
        self.release()
        for key in self.keys(output):
            try:
                folder.mkdir(mode=0o700, exist_ok=True)
                handle = open(folder / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.lock", "a+", encoding="utf-8")
            except OSError as err:
                self.release()
                raise UserError(_explain_os_error(err, folder)) from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                self.release()
                raise UserError(f"{output} is being written by {holder}; two writers of one {what} would mix their "
                                f"files: wait until it ends (or stop it), then {then}") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()}")
            handle.flush()
            self._handles.append(handle)

    def release(self):
        for handle in self._handles:
            handle.close()  # closing the file drops the lock
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
