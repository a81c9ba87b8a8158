from __future__ import annotations

import json
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from prefect_remote.atomic_files import create_once, write_atomically, write_json


def test_of_concurrent_creators_the_first_wins_and_every_reader_sees_its_whole_file(tmp_path):
    path = tmp_path / "made" / "key"
    contents = [bytes([n]) * 65536 for n in range(16)]
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda content: create_once(path, content, make_folder=True), contents))
    assert created.count(True) == 1 and path.read_bytes() == contents[created.index(True)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["key"]  # nothing left aside
    assert not create_once(path, b"later") and path.read_bytes() == contents[created.index(True)]


def test_a_rewrite_replaces_the_file_whole_with_the_mode_asked(tmp_path):
    path = tmp_path / "record.json"
    write_json(path, {"a": 1}, mode=0o644)
    write_atomically(path, json.dumps({"b": 2}).encode(), mode=0o644)
    assert json.loads(path.read_text()) == {"b": 2} and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_folder_that_is_gone_stays_gone_unless_asked_for(tmp_path):
    with pytest.raises(FileNotFoundError):  # a removed machine's folder is not made again by a late write
        write_json(tmp_path / "machine" / "stop.json", {})
    with pytest.raises(FileNotFoundError):
        create_once(tmp_path / "machine" / "stop.json", b"{}")
    assert not (tmp_path / "machine").exists()
