"""`uni_seg.files`: one writer per folder (an OS lock the kernel releases when its holder dies),
output folders apart from the input, deletion limited to the files a run listed as its own.

The second writer is always a second process started after the first has taken the lock: the
test waits on the holder's own line on a pipe, never on a clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import torch

from uni_seg.files import LOCK_NAME, FolderInUse, folder_lock, remove_own_files, separate_folders, state_dict_mismatch

ROOT = Path(__file__).resolve().parent.parent

#: A process that takes the lock, says so on stdout, and holds it until its stdin is closed.
HOLDER = """
import sys
from uni_seg.files import folder_lock
with folder_lock(sys.argv[1], sys.argv[2], shared=sys.argv[3] == "shared"):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes the pipe
"""


def _holder(folder: Path, name: str = LOCK_NAME, shared: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), name, "shared" if shared else "alone"],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "locked"  # blocks until the child holds the lock
    return proc


def test_a_second_process_is_refused_while_the_first_holds_the_lock_and_admitted_after(tmp_path):
    holder = _holder(tmp_path / "out")
    try:
        with pytest.raises(FolderInUse, match=rf"in use.*process {holder.pid}"):
            with folder_lock(tmp_path / "out"):
                pytest.fail("two writers in one folder")
        with folder_lock(tmp_path / "out", name=".shard-1.lock"):  # another writer's own lock: free
            pass
    finally:
        holder.stdin.close()
        assert holder.wait() == 0
    with folder_lock(tmp_path / "out") as path:  # released when the holder ended
        assert path == tmp_path / "out" / LOCK_NAME and path.read_text().strip() == str(os.getpid())


def test_a_shared_lock_admits_other_shared_holders_and_keeps_out_an_exclusive_one(tmp_path):
    """The shards of one run share the folder's lock; a plain run or a merge wants it alone."""
    holder = _holder(tmp_path / "out", shared=True)
    try:
        with folder_lock(tmp_path / "out", shared=True):  # a second shard: admitted
            pass
        with pytest.raises(FolderInUse, match=rf"in use.*process {holder.pid}.*this merge"):
            with folder_lock(tmp_path / "out", what="merge"):
                pytest.fail("a merge while a shard writes")
    finally:
        holder.stdin.close()
        assert holder.wait() == 0
    exclusive = _holder(tmp_path / "out")
    try:
        with pytest.raises(FolderInUse, match="in use"), folder_lock(tmp_path / "out", shared=True):
            pytest.fail("a shard while a plain run writes")
    finally:
        exclusive.stdin.close()
        assert exclusive.wait() == 0


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    """Principle 'one writer' on a case the issue does not list: kill -9 the holder; the kernel
    drops its lock, so the next run is admitted at once (no stale-lock clean-up needed)."""
    holder = _holder(tmp_path / "out")
    holder.send_signal(signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    with folder_lock(tmp_path / "out"):
        pass


def test_a_users_file_named_like_the_lock_is_left_as_it_is(tmp_path):
    (tmp_path / LOCK_NAME).write_text("the user's notes")
    with folder_lock(tmp_path):
        pass
    assert (tmp_path / LOCK_NAME).read_text() == "the user's notes"


@pytest.mark.parametrize("output, word", [(".", "is the input"), ("sub", "inside"), ("..", "holds")])
def test_an_output_folder_that_is_in_or_holds_the_input_is_refused(tmp_path, output, word):
    inputs = tmp_path / "in"
    inputs.mkdir()
    with pytest.raises(ValueError, match=word):
        separate_folders(inputs, inputs / output)
    separate_folders(inputs, tmp_path / "out")  # beside it: fine


def test_only_the_named_plain_files_are_removed(tmp_path):
    for name in ("a_cells.csv", "mine.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "b_cells.csv").mkdir()
    removed = remove_own_files(tmp_path, ["a_cells.csv", "b_cells.csv", "gone.csv"])
    assert removed == [tmp_path / "a_cells.csv"] and (tmp_path / "mine.txt").exists() and (tmp_path / "b_cells.csv").is_dir()
    with pytest.raises(ValueError, match="plain file name"):
        remove_own_files(tmp_path, ["../mine.txt"])


# ----------------------------------------------------------------------------- atomic writes
def test_atomic_open_replaces_whole_files_and_leaves_nothing_on_error(tmp_path):
    import os

    from uni_seg.files import ATOMIC_TEMP_GLOB, atomic_open, atomic_write

    target = tmp_path / "sub" / "x.json"
    assert atomic_write(target, '{"a": 1}') == target  # parent folders are created
    assert atomic_write(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_open(target, "w") as handle:
            handle.write('{"a": 2, "half')
            assert list(target.parent.glob(ATOMIC_TEMP_GLOB))  # the new content goes to a temporary
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{"a": 1}'  # the old file is intact
    assert os.listdir(target.parent) == ["x.json"]  # and the temporary is gone
    with pytest.raises(ValueError, match="mode='a'"):
        with atomic_open(target, "a"):
            pass


def test_remove_stale_temporaries_spares_live_writers(tmp_path):
    import os

    from uni_seg.files import remove_stale_temporaries

    dead = tmp_path / ".x.pth.tmp-999999999.0a1b2c3d"  # no such process
    live = tmp_path / f".y.pth.tmp-{os.getppid()}.0a1b2c3d"  # a live process other than this one
    mine = tmp_path / f".z.pth.tmp-{os.getpid()}.0a1b2c3d"  # this process: left over, not in use
    for path in (dead, live, mine):
        path.write_bytes(b"partial")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([dead, mine])
    assert [p.name for p in tmp_path.iterdir()] == [live.name]


def test_weights_that_do_not_fit_name_the_first_few_tensors_and_the_count():
    expected = {f"blocks.{i}.w": torch.zeros(4, 4) for i in range(50)}
    given = {f"blocks.{i}.w": torch.zeros(8, 4) for i in range(48)} | {"extra": torch.zeros(1)}
    message = state_dict_mismatch(expected, given)
    assert message.startswith("48 key(s) of another shape (first: blocks.0.w (8, 4) in the file, (4, 4) in the model")
    assert "2 missing (first: blocks.48.w, blocks.49.w)" in message and "1 unexpected (first: extra)" in message
    assert message.count("blocks.") <= 5 and "\n" not in message
    assert state_dict_mismatch(expected, expected) == ""
