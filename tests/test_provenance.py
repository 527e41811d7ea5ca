"""provenance: where a run came from (the spec file's repository commit and dirty flag, and the
installed packages), without TensorFlow."""

from __future__ import annotations

import subprocess

from normbench import provenance


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def test_a_spec_outside_git_has_no_commit(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\n")
    found = provenance.source(str(spec))
    assert found == {"spec_file": str(spec.resolve()), "git_commit": None, "git_dirty": None}
    assert provenance.source(None)["spec_file"] is None


def test_commit_and_dirty_flag_of_the_spec_files_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    spec = repo / "s.yaml"
    spec.write_text("name: s\n")
    _git(repo, "add", "s.yaml")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "spec")
    clean = provenance.source.__wrapped__(str(spec))
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] is False
    spec.write_text("name: changed\n")
    assert provenance.source.__wrapped__(str(spec))["git_dirty"] is True


def test_packages_are_listed_with_a_checksum_of_the_list():
    listed, digest = provenance.packages()
    assert any(p.startswith("pydantic==") for p in listed) and listed == sorted(listed)
    assert len(digest) == 64
