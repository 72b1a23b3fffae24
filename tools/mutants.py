"""Hand-made mutants of xstore's safety guards: remove each guard once (a small textual change), run the
tests that guard it, and expect them to fail. Prints one line per mutant and the count killed.

    .venv/bin/python tools/mutants.py [SUBSTRING...]   # only the mutants whose name contains one

It edits files of the working tree and restores them after each run: do not run it beside other work on
the same checkout. A mutant that makes its tests hang counts as killed (after a timeout).
"""

# The table below holds code as written: its lines are as long as the code they quote.
# ruff: noqa: E501

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
UNIT = "tests/unit/test_faults.py::"
INTEGRATION = "tests/integration/test_faults.py::"
# (name, file, the guard as written, the guard removed, the tests that must then fail)
MUTANTS: list[tuple[str, str, str, str, list[str]]] = [
    ("dump: shrink check", "xstore/nar/dump.py", "            if not data:\n                raise DumpError(", "            if False:\n                raise DumpError(", [UNIT + "test_a_file_that_changes_size_while_dumped_is_an_error[shrink]"]),
    ("dump: grow check (large)", "xstore/nar/dump.py", "        if os.read(fd, 1):\n            self._grew(path, size)", "        if False:\n            self._grew(path, size)", [UNIT + "test_a_file_that_changes_size_while_dumped_is_an_error[grow]"]),
    ("dump: grow check (small)", "xstore/nar/dump.py", "            if len(data) > left:\n                self._grew(path, size)", "            if False:\n                self._grew(path, size)", [UNIT + "test_a_small_file_that_grew_is_an_error"]),
    ("restore: re-check before commit", "xstore/nar/restore.py", "            if os.path.lexists(self.dest):\n                raise DestinationExistsError(\n                    f\"'{os.fsdecode(self.dest)}' appeared", "            if False:\n                raise DestinationExistsError(\n                    f\"'{os.fsdecode(self.dest)}' appeared", [UNIT + "test_an_entry_that_appears_at_the_destination_is_never_replaced[directory]"]),
    ("restore: link-based commit", "xstore/nar/restore.py", "                    os.link(\n                        _ROOT_NAME,\n                        self._name,\n                        src_dir_fd=self._staging_fd,\n                        dst_dir_fd=self._parent_fd,\n                        follow_symlinks=False,\n                    )", "                    self._rename_root()", [UNIT + "test_an_entry_that_appears_at_the_destination_is_never_replaced[file]", UNIT + "test_the_final_step_never_replaces_even_in_the_last_instant"]),
    ("restore: O_EXCL", "xstore/nar/restore.py", "os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW", "os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW", [INTEGRATION + "test_restore_without_the_hack_onto_a_folding_filesystem_never_overwrites"]),
    ("dump: O_NOFOLLOW", "xstore/nar/dump.py", "_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC", "_FILE_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC", [UNIT + "test_an_entry_swapped_for_a_symlink_mid_walk_is_refused"]),
    ("import: leftover clean-up", "xstore/store_add.py", "                store.remove_invalid_leftover(info.path)\n", "", [UNIT + "test_import_after_a_kill_between_rename_and_register"]),
    ("import: path lock across rename and register", "xstore/store_add.py", "            with store.lock(info.path):", "            with contextlib.nullcontext():", [UNIT + "test_the_path_lock_is_held_across_rename_and_register"]),
    ("import: clean-up after a failed registration", "xstore/store_add.py", "                except BaseException:\n                    remove_tree(real)\n                    raise", "                except BaseException:\n                    raise", [UNIT + "test_failed_registration_after_the_rename_leaves_nothing"]),
    ("leftover: never a valid path", "xstore/store.py", "        if self.is_valid(path):\n            raise StoreError(f\"'{path}' is valid; refusing to remove it\")", "", [UNIT + "test_leftover_removal_never_deletes_a_valid_path"]),
    ("canonicalise: all special bits", "xstore/fsops.py", "        if stat.S_IMODE(st.st_mode) != mode:", "        if st.st_mode & 0o777 != mode:", [UNIT + "test_canonicalise_clears_setuid_setgid_and_sticky"]),
    ("schema: foreign keys pragma", "xstore/store.py", "            db.execute(\"pragma foreign_keys = 1\")\n", "", [UNIT + "test_foreign_keys_are_enforced"]),
    ("schema: old versions refused", "xstore/store.py", "        if version not in (0, SCHEMA_VERSION):", "        if False:", [UNIT + "test_older_schema_versions_are_refused"]),
    ("wire: zero padding", "xstore/wire.py", "    if buf[end:padded] != ZEROS[: padded - end]:\n        raise WireError(\"non-zero padding\", offset=pos)", "", ["tests/unit/test_formats.py::test_export_parser_errors", "tests/unit/test_formats.py::test_wire_buffer_bounds"]),
    ("wire: string bound", "xstore/wire.py", "    if n > max_len:\n        raise WireError(", "    if False:\n        raise WireError(", ["tests/unit/test_formats.py::test_export_parser_errors", "tests/unit/test_formats.py::test_wire_buffer_bounds"]),
    ("export trailer: reference count bound", "xstore/wire.py", "        if n > limit:", "        if False:", [UNIT + "test_a_trailer_claiming_too_many_references_is_refused_at_once"]),
    ("locks: never a valid *.lock path", "xstore/pathlocks.py", "            if is_valid_path():\n                return  # a store path", "            if False:\n                return  # a store path", [UNIT + "test_a_valid_path_named_like_a_lock_file_is_never_used_as_one", UNIT + "test_a_valid_lock_named_path_is_not_even_locked"]),
    ("locks: no spinning on junk", "xstore/pathlocks.py", "            if linked:\n                return  # a linked file", "            if False:\n                return  # a linked file", [UNIT + "test_junk_lock_file_with_contents_is_left_alone_without_spinning"]),
    ("folding store: exact name before removal", "xstore/store.py", "        if not self._listed_exactly(path.base):", "        if False:", [INTEGRATION + "test_names_that_fold_together_never_replace_a_valid_path"]),
    ("database: interruptible wait", "xstore/store.py", "isolation_level=None, timeout=0.1, check_same_thread=False\n        )", "isolation_level=None, timeout=3600.0, check_same_thread=False\n        )", [INTEGRATION + "test_a_busy_database_is_waited_for_audibly_and_interruptibly"]),
    ("cli: closed standard streams", "xstore/cli/app.py", "    guard_standard_streams()\n", "", [INTEGRATION + "test_closed_standard_streams_give_one_line"]),
    ("cli: import stops between paths", "xstore/cli/store.py", "                    except OSError as e:\n                        raise StreamClosedError(", "                    except ValueError as e:\n                        raise StreamClosedError(", [INTEGRATION + "test_import_stops_cleanly_between_paths_when_output_goes_away"]),
    ("cli: SIGHUP", "xstore/cli/app.py", "    signal.signal(signal.SIGHUP, _terminate)\n", "", [INTEGRATION + "test_killed_restores_leave_nothing_for_long[SIGHUP]"]),
    ("restore: dead staging removed", "xstore/nar/restore.py", "            remove_dead_staging(self._parent_fd)  # what killed restores left here", "            pass", [UNIT + "test_a_later_restore_removes_what_dead_restores_left", INTEGRATION + "test_killed_restores_leave_nothing_for_long[SIGKILL]"]),
    ("store: NULL narSize", "xstore/store.py", "        if hasher.digest() != info.nar_hash or (info.nar_size and size != info.nar_size):", "        if hasher.digest() != info.nar_hash or size != info.nar_size:", [UNIT + "test_null_nar_size_is_unknown_not_wrong"]),
    ("verify: NULL narSize", "xstore/verify.py", "        if hasher.digest() != info.nar_hash or (info.nar_size and size != info.nar_size):", "        if hasher.digest() != info.nar_hash or size != info.nar_size:", [UNIT + "test_null_nar_size_is_unknown_not_wrong"]),
    ("store: corrupt rows skipped", "xstore/store.py", "        return sorted(p for p in map(store_path_of_row, self._all_rows()) if p is not None)", "        return sorted(parse_store_path(p) for p in self._all_rows())", [UNIT + "test_one_invalid_row_does_not_stop_verify"]),
    ("case hack: names onto hacked names", "xstore/casehack.py", "        if taken is not None:", "        if False:", ["tests/unit/test_casehack.py::test_a_name_on_a_hacked_name_is_refused_up_front"]),
    ("mount: non-empty mount point", "xstore/fuse/lifecycle.py", "    if not nonempty and os.listdir(path):", "    if False:", [INTEGRATION + "test_mounting_over_a_nonempty_directory_needs_nonempty"]),
    ("umount: only xstore's mounts", "xstore/fuse/lifecycle.py", "types[-1] != f\"fuse.{SUBTYPE}\"", "not types[-1].startswith(\"fuse\")", [INTEGRATION + "test_umount_refuses_what_xstore_did_not_mount"]),
    ("readers: read-only opening", "xstore/store.py", "        if self.read_only:\n            return self._connect_read_only()\n", "", [INTEGRATION + "test_readers_work_on_a_full_disk"]),
    ("-o: write through symlinks", "xstore/fsops.py", "    if os.path.islink(path):\n        path = os.path.realpath(path)\n", "", [UNIT + "test_output_onto_a_symlink_writes_through_it"]),
    ("nar ls/cat: trailing bytes", "xstore/nar/listing.py", "            if parser.unused_data or read(1):", "            if False:", [UNIT + "test_listing_refuses_trailing_bytes_as_restore_does"]),
    ("messages: names as bytes", "xstore/nar/rules.py", "    text = data[:limit].decode(\"utf-8\", \"surrogateescape\")", "    text = data[:limit].decode(\"utf-8\", \"backslashreplace\")", [UNIT + "test_non_utf8_names_in_messages_are_the_bytes_themselves"]),
    ("progress: cleared before output", "xstore/cli/common.py", "        with self._lock:\n            self._clear()\n            stream = sys.stderr", "        with self._lock:\n            stream = sys.stderr", ["tests/integration/test_progress.py::test_import_progress_in_a_terminal"]),
]


def main(only: list[str]) -> int:
    killed = ran = 0
    for name, rel, old, new, tests in MUTANTS:
        if only and not any(o in name for o in only):
            continue
        ran += 1
        dead = run_mutant(rel, old, new, tests)
        if dead is None:
            print(f"SKIP (the guard's text is not found exactly once): {name}")
            ran -= 1
            continue
        killed += dead
        print(("killed   " if dead else "SURVIVED ") + name, flush=True)
    print(f"{killed} of {ran} mutants killed")
    return 0 if killed == ran else 1


def run_mutant(rel: str, old: str, new: str, tests: list[str]) -> bool | None:
    path = ROOT / rel
    text = path.read_text()
    if text.count(old) != 1:
        return None
    path.write_text(text.replace(old, new))
    try:
        result = subprocess.run(
            [sys.executable, "-X", "dev", "-bb", "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
            check=False,
        )
        return result.returncode != 0
    except subprocess.TimeoutExpired:
        return True
    finally:
        path.write_text(text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

