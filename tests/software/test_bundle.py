"""Which files the code bundle holds, and that it is reproducible."""

from pathlib import Path

import pytest

from prefect_remote.software.bundle import BundleTooLarge, select_files, write_bundle


def tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_gitignore_defaults_and_virtualenvs_are_respected(tmp_path):
    tree(
        tmp_path,
        {
            "flow.py": "x",
            "data/a.csv": "1",
            "model.bin": "b",
            ".gitignore": "*.log\n/build/\n",
            "run.log": "l",
            "build/out.txt": "o",
            "pkg/.gitignore": "cache/\n!keep.log\n",
            "pkg/mod.py": "m",
            "pkg/cache/c.py": "c",
            "pkg/keep.log": "k",
            "pkg/sub/cache/deep.py": "d",
            ".git/config": "g",
            "__pycache__/x.pyc": "p",
            "node_modules/m.js": "j",
            "myenv/pyvenv.cfg": "home = /usr",
            "myenv/lib/site.py": "s",
            ".env": "TOKEN=x",
            "certs/server.pem": "p",
            "deploy.key": "k",
        },
    )
    selected = select_files(tmp_path).files
    assert selected == [".gitignore", "data/a.csv", "flow.py", "model.bin", "pkg/.gitignore", "pkg/keep.log", "pkg/mod.py"]


def test_include_and_exclude(tmp_path):
    tree(tmp_path, {"flow.py": "x", "data/a.csv": "1", "data/b.parquet": "2", "notes.md": "n"})
    assert select_files(tmp_path, exclude=["data/"]).files == ["flow.py", "notes.md"]
    assert select_files(tmp_path, include=["*.py", "*.csv"]).files == ["data/a.csv", "flow.py"]


def test_size_guard_names_the_largest_files(tmp_path):
    tree(tmp_path, {"flow.py": "x", "data/big.bin": "0" * 5000, "data/medium.bin": "0" * 2000})
    with pytest.raises(BundleTooLarge, match=r"comes to 6.8 KiB, over the 4 KiB limit. Largest files: data/big.bin \(4.9 KiB\)"):
        select_files(tmp_path, max_size=4096)


def test_same_files_same_bytes(tmp_path):
    root = tree(tmp_path / "p", {"flow.py": "x", "data/a.csv": "1"})
    first = write_bundle(select_files(root), tmp_path / "one.tar.gz").read_bytes()
    (root / "flow.py").touch()  # a new mtime changes nothing
    assert write_bundle(select_files(root), tmp_path / "two.tar.gz").read_bytes() == first
    (root / "flow.py").write_text("y")
    assert write_bundle(select_files(root), tmp_path / "three.tar.gz").read_bytes() != first
