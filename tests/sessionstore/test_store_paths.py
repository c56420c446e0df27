"""Both path forms the CLI sends map to one relative path; everything else is refused with the session named."""

from __future__ import annotations

import pytest

from copilot_fleet.sessionstore.paths import MAX_DEPTH, MAX_RELATIVE_PATH_BYTES, PathRefused, Resolved, SessionPaths

SID = "u-5-alice-code-1700000000-0123abcd"
OTHER = "u-3-bob-code-1700000000-0123abcd"


@pytest.fixture
def paths() -> SessionPaths:
    return SessionPaths("/session-state", "/srv/cli-0/home", "/srv/cli-0/work")


@pytest.mark.parametrize(
    ("path", "relative"),
    [
        ("/session-state/events.jsonl", "events.jsonl"),
        (f"/srv/cli-0/home/session-state/{SID}/events.jsonl", "events.jsonl"),
        ("/session-state/checkpoints/index.md", "checkpoints/index.md"),
        (f"/srv/cli-0/home/session-state/{SID}/checkpoints/index.md", "checkpoints/index.md"),
        ("/session-state", ""),
        (f"/srv/cli-0/home/session-state/{SID}", ""),
        ("//session-state///files//notes.txt", "files/notes.txt"),
        ("/session-state/workspace.yaml.tmp.48336e56-4272", "workspace.yaml.tmp.48336e56-4272"),
    ],
)
def test_both_forms_map_to_one_relative_path(paths: SessionPaths, path: str, relative: str) -> None:
    resolved = paths.resolve(SID, path)
    assert resolved.kind == "state" and resolved.relative == relative
    assert resolved.form == ("home" if path.startswith("/srv") else "registered")


def test_the_initial_working_directory_is_its_own_kind(paths: SessionPaths) -> None:
    assert paths.resolve(SID, "/srv/cli-0/work") == Resolved("cwd", "", "cwd")
    with pytest.raises(PathRefused, match="outside the session's state"):
        paths.resolve(SID, "/srv/cli-0/work/src/main.py")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/session-state/../etc/passwd", r"'\.' or '\.\.'"),
        ("/session-state/./events.jsonl", r"'\.' or '\.\.'"),
        (f"/srv/cli-0/home/session-state/{SID}/../{OTHER}/events.jsonl", r"'\.' or '\.\.'"),
        (f"/srv/cli-0/home/session-state/{OTHER}/events.jsonl", f"belongs to session '{OTHER}'"),
        ("/srv/cli-0/home/session-state/.session-operation-locks/x.lock", "belongs to session"),
        ("/srv/cli-0/home/config.json", "outside the session's state"),
        ("/etc/passwd", "outside the session's state"),
        ("/session-statefoo/events.jsonl", "outside the session's state"),
        ("session-state/events.jsonl", "not absolute"),
        ("/session-state/a\x00b", "NUL"),
    ],
)
def test_escapes_are_refused_naming_the_session(paths: SessionPaths, path: str, reason: str) -> None:
    with pytest.raises(PathRefused, match=reason) as info:
        paths.resolve(SID, path)
    assert SID in str(info.value)


def test_bounds_on_length_and_depth(paths: SessionPaths) -> None:
    paths.resolve(SID, "/session-state/" + "a" * MAX_RELATIVE_PATH_BYTES)
    with pytest.raises(PathRefused, match="bytes below the session's directory"):
        paths.resolve(SID, "/session-state/" + "a" * (MAX_RELATIVE_PATH_BYTES + 1))
    with pytest.raises(PathRefused, match="nested deeper"):
        paths.resolve(SID, "/session-state/" + "/".join(["d"] * (MAX_DEPTH + 1)))


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "a.b", "x" * 200])
def test_invalid_session_ids_are_refused(paths: SessionPaths, bad: str) -> None:
    with pytest.raises(PathRefused, match="session id"):
        paths.resolve(bad, "/session-state/events.jsonl")


def test_non_string_path_is_refused(paths: SessionPaths) -> None:
    with pytest.raises(PathRefused, match="must be a string"):
        paths.resolve(SID, 42)


@pytest.mark.parametrize(
    ("state", "home", "message"),
    [
        ("/", "/h", "must not be '/'"),
        ("relative", "/h", "absolute"),
        ("/h/session-state/x", "/h", "must not contain each other"),
        ("/h", "/h/inner", "must not contain each other"),
        ("/a/../b", "/h", r"'\.' or '\.\.'"),
    ],
)
def test_bad_configuration_is_refused(state: str, home: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SessionPaths(state, home, "/work")
