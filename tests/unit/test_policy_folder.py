"""Which files of a policy folder are read, and the version: a hash of what they hold.

Kubernetes mounts a ConfigMap as `..<timestamp>/` holding the files, `..data` linking to it,
and one top-level symlink per key into `..data/`; an update writes a new `..<timestamp>/` and
swaps `..data`. Only the top-level names count, and mtimes say nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.policy.compile import load_folder
from sidecar.policy.problems import PolicyInvalid
from tests.unit.policy_files import BASE, problems, write

ROUTE = """\
routes:
  chat:
    targets: [m]
    timeout: {timeout}
"""


def _configmap_revision(folder: Path, stamp: str, timeout: str) -> None:
    """Write one ConfigMap revision and point `..data` at it, atomically as kubelet does."""
    write(folder / stamp, {"base.yaml": BASE, "routes.yaml": ROUTE.format(timeout=timeout)})
    (folder / "..data_tmp").symlink_to(stamp)
    os.replace(folder / "..data_tmp", folder / "..data")


def test_a_configmap_mount_is_read_through_its_top_level_links(tmp_path: Path):
    _configmap_revision(tmp_path, "..2024_01_01_00_00_00.1234", "20s")
    (tmp_path / "base.yaml").symlink_to("..data/base.yaml")
    (tmp_path / "routes.yaml").symlink_to("..data/routes.yaml")

    first = load_folder(tmp_path, env={})
    assert first.files == ("base.yaml", "routes.yaml")  # not also ..data/, ..2024_*/
    assert first.routes["chat"].timeout == 20.0

    _configmap_revision(tmp_path, "..2024_01_02_00_00_00.5678", "45s")  # the old one stays
    second = load_folder(tmp_path, env={})
    assert second.files == ("base.yaml", "routes.yaml")
    assert second.routes["chat"].timeout == 45.0
    assert second.version != first.version


def test_dotfiles_dot_folders_and_other_extensions_are_not_read(tmp_path: Path):
    broken = "routes: [\n"
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            ".draft.yaml": broken,
            ".git/policy.yaml": broken,
            "..2024_01_01_00_00_00.1234/base.yaml": BASE,  # would be a second `m`
            "routes.yaml.bak": broken,
            "routes.json": broken,
            "README.md": broken,
        },
    )
    assert load_folder(tmp_path, env={}).files == ("base.yaml",)


def test_subfolders_are_read_recursively_and_yml_counts(tmp_path: Path):
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            "teams/research/routes.yml": """\
                routes:
                  research:
                    targets: [m]
                """,
            "teams/ml/models.yaml": """\
                models:
                  big:
                    provider: p
                """,
        },
    )
    policy = load_folder(tmp_path, env={})
    assert policy.files == ("base.yaml", "teams/ml/models.yaml", "teams/research/routes.yml")
    assert [t.model.name for t in policy.routes["research"].targets] == ["m"]
    assert "big" in policy.models


def test_a_linked_subfolder_is_read_under_the_name_of_the_link(tmp_path: Path):
    shared = write(tmp_path / "shared", {"routes.yaml": ROUTE.format(timeout="20s")})
    policies = write(tmp_path / "policies", {"base.yaml": BASE})
    (policies / "common").symlink_to(shared, target_is_directory=True)
    policy = load_folder(policies, env={})
    assert policy.files == ("base.yaml", "common/routes.yaml")
    assert "chat" in policy.routes


def test_a_problem_in_a_subfolder_names_the_file_by_its_path_in_the_folder(tmp_path: Path):
    write(
        tmp_path,
        {
            "base.yaml": BASE,
            "teams/research/routes.yml": """\
                routes:
                  research:
                    targets: [gone]
                """,
        },
    )
    assert problems(tmp_path) == [
        "teams/research/routes.yml:3: route 'research' targets model 'gone', which is not "
        "defined (models: m)"
    ]


def test_a_missing_folder_is_a_problem(tmp_path: Path):
    with pytest.raises(PolicyInvalid, match="policy folder does not exist"):
        load_folder(tmp_path / "nope", env={})


# --- version -------------------------------------------------------------------------------------


def _folder(root: Path, name: str, files: dict[str, str]) -> Path:
    return write(root / name, files)


FILES = {"base.yaml": BASE, "routes.yaml": ROUTE.format(timeout="20s")}


def test_the_same_content_has_the_same_version_wherever_and_whenever_it_is(tmp_path: Path):
    a = _folder(tmp_path, "a", FILES)
    b = _folder(tmp_path, "b", FILES)
    version = load_folder(a, env={}).version
    assert load_folder(b, env={}).version == version
    os.utime(a / "routes.yaml", (0, 0))  # a ConfigMap update keeps mtimes; so must we
    assert load_folder(a, env={}).version == version


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"routes.yaml": ROUTE.format(timeout="21s")}, id="a-value"),
        pytest.param({"routes.yaml": ROUTE.format(timeout="20s") + "# reviewed\n"}, id="a-comment"),
        pytest.param({"extra.yaml": ""}, id="a-new-file"),
    ],
)
def test_any_change_gives_a_new_version(tmp_path: Path, change: dict[str, str]):
    before = load_folder(_folder(tmp_path, "before", FILES), env={}).version
    after = load_folder(_folder(tmp_path, "after", {**FILES, **change}), env={}).version
    assert after != before


def test_renaming_a_file_gives_a_new_version(tmp_path: Path):
    before = load_folder(_folder(tmp_path, "before", FILES), env={}).version
    renamed = {"base.yaml": BASE, "chat.yaml": FILES["routes.yaml"]}
    assert load_folder(_folder(tmp_path, "after", renamed), env={}).version != before
