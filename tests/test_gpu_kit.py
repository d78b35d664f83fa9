"""bin/gpu-kit: the big tracked files stop travelling and come back exactly; checkpoints cross in checked parts."""

import importlib.machinery
import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _kit():
    loader = importlib.machinery.SourceFileLoader("gpu_kit", str(ROOT / "bin" / "gpu-kit"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_kit", loader))
    loader.exec_module(module)
    return module


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def _travelling(repo: Path) -> set[str]:
    """What the device tool sends: tracked files and untracked ones git does not ignore."""
    return set(_git(repo, "ls-files", "--cached", "--others", "--exclude-standard").split())


def test_hide_keeps_the_big_files_home_and_unhide_restores_the_index_exactly(tmp_path):
    kit = _kit()
    repo = tmp_path / "repo"
    for name, data in {"vaecodec/weights/m.pt": b"model", "checkpoints/s.pt": b"state", "README.md": b"hi",
                       "checkpoints/log.txt": b"log"}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "start")
    (repo / "checkpoints" / "s.pt").write_bytes(b"state, trained on")  # uncommitted progress
    status = _git(repo, "status", "--porcelain")

    assert sorted(kit.hide(repo)) == ["checkpoints/s.pt", "vaecodec/weights/m.pt"]
    assert _travelling(repo) == {"README.md", "checkpoints/log.txt"}
    assert (repo / "checkpoints" / "s.pt").read_bytes() == b"state, trained on"  # on disk, untouched
    assert (repo / "vaecodec" / "weights" / "m.pt").read_bytes() == b"model"

    assert kit.unhide(repo) == []  # nothing changed on disk meanwhile
    assert _git(repo, "status", "--porcelain") == status  # the modified checkpoint is modified again, nothing staged
    assert _git(repo, "diff", "--cached") == ""
    assert _travelling(repo) == {"README.md", "checkpoints/log.txt", "checkpoints/s.pt", "vaecodec/weights/m.pt"}
    assert (repo / "checkpoints" / "s.pt").read_bytes() == b"state, trained on"
    exclude = (repo / ".git" / "info" / "exclude").read_text().splitlines()
    assert exclude[-1] == f"/{kit.KIT}/" and exclude.count(kit.EXCLUDE_MARK) == 1


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "checkpoints").mkdir(parents=True)
    (repo / "checkpoints" / "s.pt").write_bytes(b"state")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "start")
    return repo


def test_hide_and_unhide_refuse_what_could_lose_data_and_keep_what_git_would_clobber(tmp_path):
    kit = _kit()
    repo = _repo(tmp_path)
    with pytest.raises(kit.KitError, match="nothing is hidden"):
        kit.unhide(repo)
    (repo / "checkpoints" / "s.pt").write_bytes(b"staged")
    _git(repo, "add", "checkpoints/s.pt")
    with pytest.raises(kit.KitError, match="staged"):  # unhide could only give back HEAD's entry
        kit.hide(repo)
    assert "s.pt" in _git(repo, "ls-files") and _git(repo, "diff", "--cached", "--name-only") == "checkpoints/s.pt\n"
    _git(repo, "reset", "-q")
    (repo / "checkpoints" / "s.pt").write_bytes(b"trained on")
    kit.hide(repo)
    with pytest.raises(kit.KitError, match="already hidden"):
        kit.hide(repo)
    _git(repo, "checkout", "HEAD", "--", "checkpoints")  # a git command that clobbers the ignored file
    assert (repo / "checkpoints" / "s.pt").read_bytes() == b"state"
    changed = kit.unhide(repo)
    assert len(changed) == 1 and changed[0].startswith("checkpoints/s.pt (hidden as ")
    blob = changed[0].split("hidden as ")[1].rstrip(")")
    assert _git(repo, "cat-file", "blob", blob) == "trained on"  # recoverable
    kit.hide(repo)
    (repo / "new.txt").write_text("x")
    _git(repo, "add", "new.txt")
    _git(repo, "commit", "-q", "-m", "while hidden")
    with pytest.raises(kit.KitError, match="HEAD moved"):
        kit.unhide(repo)


def test_a_checkpoint_crosses_in_parts_and_a_damaged_part_is_refused(tmp_path, monkeypatch):
    kit = _kit()
    monkeypatch.setattr(kit, "PART_BYTES", 1000)
    data = bytes(range(256)) * 10  # 2,560 bytes: three parts
    checkpoint = tmp_path / "cc-stable.pt"
    checkpoint.write_bytes(data)
    manifest = kit.split(checkpoint, tmp_path / "out")
    assert [p["name"] for p in manifest["parts"]] == [f"cc-stable.pt.part{i}" for i in range(3)]
    assert all((tmp_path / "out" / p["name"]).stat().st_size <= 1000 for p in manifest["parts"])

    kit.join(tmp_path / "out", tmp_path / "joined.pt")
    assert (tmp_path / "joined.pt").read_bytes() == data
    with pytest.raises(SystemExit, match="exists"):  # never overwritten without force
        kit.join(tmp_path / "out", tmp_path / "joined.pt")

    part = tmp_path / "out" / "cc-stable.pt.part1"
    part.write_bytes(part.read_bytes()[:-1] + b"\x00")
    with pytest.raises(SystemExit, match="damaged"):
        kit.join(tmp_path / "out", tmp_path / "joined.pt", force=True)
    assert (tmp_path / "joined.pt").read_bytes() == data  # the earlier file is still whole


def test_the_travelling_tree_leaves_out_what_hide_would_and_sizes_the_image_parts(tmp_path):
    kit = _kit()
    repo = tmp_path / "repo"
    for name, size in {"vaecodec/weights/m.pt": 5000, "checkpoints/s.pt": 7000, "README.md": 100,
                       "checkpoints/old/s.pt": 30}.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"x" * size)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "start")
    (repo / "vaecodec" / "weights" / "new.pt").write_bytes(b"x" * 900)  # untracked: the excludes hide it too
    (repo / "notes.txt").write_bytes(b"x" * 11)  # untracked, not ignored: it travels
    assert kit.travelling_bytes(repo) == 100 + 30 + 11
    kit.hide(repo)
    assert kit.travelling_bytes(repo) == 100 + 30 + 11
    kit.unhide(repo)

    room = kit.CALL_BYTES - kit.MARGIN_BYTES
    assert kit.part_bytes_for(10_000_000, 40_000_000) == room - 10_000_000
    with pytest.raises(kit.KitError, match="leaves"):  # images in parts so small they would need too many calls
        kit.part_bytes_for(int(room - kit.MIN_PART_BYTES) + 1, 1000)
    with pytest.raises(kit.KitError, match="checkpoint"):
        kit.part_bytes_for(25_000_000, 40_000_000)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_this_checkouts_tree_leaves_room_for_the_kits_calls():
    """What the kit's calls carry beside the tree: a part of the images sized by ``part_bytes_for``, or the
    stable checkpoint and constriction's wheel. A tree grown too far would stop a lent GPU's calls: this
    fails before a session that draws one finds out."""
    kit = _kit()
    checkpoint = (ROOT / "checkpoints" / "cc-stable.pt").stat().st_size
    assert kit.part_bytes_for(kit.travelling_bytes(ROOT), checkpoint) >= kit.MIN_PART_BYTES
