"""FileStore on a symlinked credential path: one target, one lock, and the link is kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from authfsm import AuthEngine, State
from authfsm.adapters import FileStore
from authfsm.engine import LeaseTimeout, Record, StorageUnavailable

from .helpers import sample_credentials

CREDS = sample_credentials("at-SECRET-1c5e", "rt-SECRET-9b7a")


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(name="target")
def _target(tmp_path: Path) -> Path:
    """Where the credential really lives (its folder exists, the file not yet)."""
    folder = tmp_path / "real"
    folder.mkdir(mode=0o700)
    return folder / "auth.json"


@pytest.fixture(name="link")
def _link(tmp_path: Path, target: Path) -> Path:
    """A symlink in another folder that names the target by a relative path."""
    folder = tmp_path / "home"
    folder.mkdir()
    link = folder / "auth.json"
    link.symlink_to(Path("..") / "real" / "auth.json")
    return link


class TestResolvedOnce:
    """A symlinked path is resolved when the store is made: the store is the target's."""

    def test_the_store_names_the_target(self, link, target):
        """path, location and the lock file are the target's, so every engine agrees on them."""
        store = FileStore(link)

        assert target.resolve() == store.path
        assert str(target.resolve()) == store.location
        with store.lease(timeout=1.0):
            pass
        assert ["auth.json.lock"] == listing(target.parent)
        assert ["auth.json"] == listing(link.parent)

    def test_a_chain_of_links_is_followed_to_the_end(self, tmp_path, link, target):
        """A link to a link is resolved to the final file."""
        outer = tmp_path / "outer.json"
        outer.symlink_to(link)

        assert target.resolve() == FileStore(outer).path

    def test_a_loop_is_a_typed_error(self, tmp_path):
        """Links that name each other raise StorageUnavailable(symlink_loop) naming the path."""
        first, second = tmp_path / "a.json", tmp_path / "b.json"
        first.symlink_to(second)
        second.symlink_to(first)

        with pytest.raises(StorageUnavailable) as caught:
            FileStore(first)

        assert "symlink_loop" == caught.value.reason
        assert str(first) in str(caught.value)

    def test_a_plain_path_is_kept_as_given(self, tmp_path):
        """Only a symlink is resolved: a plain path (even through a linked folder) stays as is."""
        (tmp_path / "real").mkdir()
        (tmp_path / "linked").symlink_to(tmp_path / "real")
        path = tmp_path / "linked" / "auth.json"

        assert path == FileStore(path).path


class TestWriteThroughTheLink:
    """Writes replace the file the link names, never the link itself."""

    def test_the_link_survives_and_the_target_holds_the_record(self, link, target):
        """After writes through the link it is still the same link; the target is 0600."""
        before = os.readlink(link)
        through_link = FileStore(link)
        first = through_link.write(Record(credential=CREDS), None)
        second = through_link.write(Record(credential=None), first.revision)

        assert link.is_symlink()
        assert before == os.readlink(link)
        assert second == FileStore(target).read() == FileStore(link).read()
        assert 0o600 == stat.S_IMODE(target.stat().st_mode)
        assert ["auth.json", "auth.json.lock"] == listing(target.parent)
        assert ["auth.json"] == listing(link.parent)

    def test_a_dangling_link_gets_its_target_created(self, link, target):
        """A link to a file that does not exist yet: the first write creates the target."""
        assert not target.exists()

        FileStore(link).write(Record(credential=CREDS), None)

        assert link.is_symlink()
        assert CREDS == FileStore(target).read().credential

    def test_delete_through_the_link_removes_the_target_only(self, link, target):
        """delete() empties the store: the target goes, the (now dangling) link stays."""
        record = FileStore(target).write(Record(credential=CREDS), None)

        FileStore(link).delete(record.revision)

        assert not target.exists()
        assert link.is_symlink()
        assert None is FileStore(link).read()


class TestOneLock:
    """Stores opened through the link and through the target share one lease."""

    @pytest.mark.parametrize("holder_via_link", [True, False])
    def test_link_and_target_exclude_each_other(self, link, target, holder_via_link):
        """While one holds the lease, the other (the other way in) times out, then gets it."""
        holder, other = (FileStore(link), FileStore(target))[:: 1 if holder_via_link else -1]
        with holder.lease(timeout=1.0), pytest.raises(LeaseTimeout), other.lease(timeout=0.1):
            pass
        with other.lease(timeout=0.2):
            pass

    def test_engines_through_link_and_target_refresh_once(
        self, link, target, endpoint, clock, server
    ):
        """One engine each way, both due: one token call, the other adopts, no reuse."""
        via_target = AuthEngine(FileStore(target), endpoint, clock=clock)
        via_target.login(server.issue())
        via_link = AuthEngine(FileStore(link), endpoint, clock=clock)
        clock.advance(3600)

        # The link's engine rotates first; the target's must see that rotation, not spend R0.
        tokens = {via_link.access_token(), via_target.access_token()}

        saved = FileStore(target).read().credential
        assert (1, 0) == (server.token_calls, server.reuse_rejections)
        assert {saved.access_token} == tokens
        assert (State.FRESH, State.RELOADED) == (via_link.state, via_target.state)
        assert link.is_symlink()
