"""Integration tests: a directory's mtime tells when its entries changed.

Indexers and backup tools rescan only directories whose mtime moved, so a
folder's mtime (and ctime) must move forward whenever a message or a
subfolder comes or goes, through the mount or through another client,
and stay put otherwise, also across a remount with the same cache.
"""

import os
import time

from helpers import files_in, poll_until, seed
from test_faults import make_message

DEADLINE = 60


def times(path):
    st = os.stat(path)
    return st.st_mtime_ns, st.st_ctime_ns


def test_folder_mtime_moves_only_with_its_entries(account, mount, tmp_path):
    seed(account, {"INBOX": [make_message(f"mtime-{i}", 1200)
                             for i in range(3)],
                   "Work": [make_message("mtime-work", 1200)]})
    cache = str(tmp_path / "cache")
    m = mount(account, cache_dir=cache, options=["refresh=1"])
    inbox = os.path.join(m.path, "INBOX")
    work = os.path.join(m.path, "Work")
    files_in(inbox)
    files_in(work)
    first = times(inbox)
    assert first[0] == first[1]

    # Refreshes that find nothing new leave it alone.  A flag changed by
    # another client is no change of the directory either.
    with account.client() as c:
        c.store("INBOX", 1, ["\\Flagged"])

    def flagged_somewhere():
        return any("\\Flagged" in os.getxattr(
            os.path.join(inbox, n), "user.mail.flags").decode()
            for n in files_in(inbox))

    poll_until(flagged_somewhere, "the flag seen through the mount",
               DEADLINE, tolerate=OSError)
    assert times(inbox) == first

    # Mail from another client moves it forward.
    with account.client() as c:
        c.append("INBOX", make_message("mtime-new", 900))
    poll_until(lambda: len(files_in(inbox)) == 4, "the new message",
               DEADLINE)
    second = times(inbox)
    assert second[0] > first[0] and second[1] == second[0]

    # rm through the mount moves it forward; the folder it did not touch
    # stays put.
    work_before = times(work)
    os.unlink(os.path.join(inbox, sorted(files_in(inbox))[0]))
    third = times(inbox)
    assert third[0] > second[0]
    assert times(work) == work_before

    # A new subfolder moves its parent forward.
    root_before = times(m.path)
    os.mkdir(os.path.join(m.path, "Fresh"))
    assert times(m.path)[0] > root_before[0]

    # The same times after a remount with the same cache.
    m.unmount()
    m2 = mount(account, cache_dir=cache, options=["refresh=1"])
    inbox2 = os.path.join(m2.path, "INBOX")
    assert len(files_in(inbox2)) == 3
    assert times(inbox2) == third
    assert times(os.path.join(m2.path, "Work")) == work_before


def test_directories_of_folders_keep_their_time(account, mount, tmp_path):
    """The top directory and a directory of folders alone (an implied
    parent, or a folder whose own listing is not loaded) list folders: their
    mtime moves only when a folder below comes or goes, not with mail in
    the folders, and stays put across remounts."""
    seed(account, {"INBOX": [make_message("dirs-inbox", 900)],
                   "Projects/Alpha": [make_message("dirs-alpha", 900)]})
    cache = str(tmp_path / "cache")
    m = mount(account, cache_dir=cache, options=["refresh=1"])
    projects = os.path.join(m.path, "Projects")
    inbox = os.path.join(m.path, "INBOX")
    files_in(inbox)
    files_in(os.path.join(projects, "Alpha"))
    root_first, projects_first = times(m.path), times(projects)
    assert root_first[0] == root_first[1]

    # New mail in a folder is no change of the directories above it.
    with account.client() as c:
        c.append("INBOX", make_message("dirs-new", 900))
    poll_until(lambda: len(files_in(inbox)) == 2, "the new message",
               DEADLINE)
    assert times(m.path) == root_first
    assert times(projects) == projects_first

    # A remount at a later second shows the same times.
    started = time.time()
    m.unmount()
    poll_until(lambda: int(time.time()) > int(started), "the next second",
               DEADLINE)
    m = mount(account, cache_dir=cache, options=["refresh=1"])
    projects = os.path.join(m.path, "Projects")
    assert times(m.path) == root_first
    assert times(projects) == projects_first

    # A folder made below moves the directory that lists it, and only it.
    os.mkdir(os.path.join(projects, "Beta"))
    projects_second = times(projects)
    assert projects_second[0] > projects_first[0]
    assert projects_second[1] == projects_second[0]
    assert times(m.path) == root_first
    os.mkdir(os.path.join(m.path, "Fresh"))
    root_second = times(m.path)
    assert root_second[0] > root_first[0]

    m.unmount()
    m = mount(account, cache_dir=cache, options=["refresh=1"])
    assert times(m.path) == root_second
    assert times(os.path.join(m.path, "Projects")) == projects_second

    # Folders made or removed by another client while nothing was mounted
    # are seen at the next mount, and move the directory listing them.
    m.unmount()
    with account.client() as c:
        c.create("Projects/Gamma")
    m = mount(account, cache_dir=cache, options=["refresh=1"])
    projects_third = times(os.path.join(m.path, "Projects"))
    assert projects_third[0] > projects_second[0]
    assert times(m.path) == root_second
    m.unmount()
    with account.client() as c:
        c.delete("Fresh")
    m = mount(account, cache_dir=cache, options=["refresh=1"])
    assert times(m.path)[0] > root_second[0]
    assert times(os.path.join(m.path, "Projects")) == projects_third
