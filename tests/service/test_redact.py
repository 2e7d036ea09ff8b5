"""Server paths out of non-admins' views: relative to the root they are under, else cut to the file name; URLs,
API paths and text without paths untouched."""

from __future__ import annotations

from prunesearch.service.redact import PathRedactor


def test_paths_under_roots_become_relative_and_others_their_file_name():
    redact = PathRedactor(("/srv/data", "/srv/data/datasets", "/home/u"))
    assert redact.text("/srv/data/datasets/abc/notes.txt") == "abc/notes.txt"  # the innermost root
    assert redact.text("/srv/data/models/m") == "models/m"
    assert redact.text("model '/srv/data' is empty") == "model '.' is empty"
    assert redact.text("/home/user2/secret.bin") == "secret.bin"  # not under /home/u: a prefix is not a parent
    assert redact.text("OSError: [Errno 2] No such file: '/opt/x/y.bin'") == "OSError: [Errno 2] No such file: 'y.bin'"
    for kept in ("/v1/exports/abc/download", "http://host:8000/v1/jobs/x", "kl", "a/b relative", "ratio 1/2"):
        assert redact.text(kept) == kept


def test_nested_values_and_keys():
    redact = PathRedactor(("/srv/data",))
    value = {"eval": {"/srv/data/a.txt": {"ppl": 1.5}}, "files": ["/srv/data/b", 3, None], "n": 2}
    assert redact(value) == {"eval": {"a.txt": {"ppl": 1.5}}, "files": ["b", 3, None], "n": 2}
