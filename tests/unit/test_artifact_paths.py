"""What the artifact routes accept as a run's file path (no Docker: the check alone)."""

from __future__ import annotations

import pytest

from sandbox.service.routes.artifacts import MAX_BLOB_NAME, RunContainer, check_path

RUN = RunContainer("run_1")


@pytest.mark.parametrize("path", ["outputs/model.pkl", "a.txt", "logs/azureml/8_azureml.log", "my plot (1).png",
                                  "données/é.csv", "x" * 200])
def test_relative_paths_are_accepted_verbatim(path: str) -> None:
    assert check_path(path, prefix_of=RUN) == path


@pytest.mark.parametrize(("path", "says"), [
    ("../other_run/x", "'..' segment"), ("outputs/../../x", "'..' segment"), ("/etc/passwd", "absolute"),
    ("a//b", "empty"), ("./", "empty"), ("dir/", "empty"), ("", "non-empty string"), (None, "non-empty string"),
    ("a\\b", "contains"), ("a?sig=x", "contains"), ("a#b", "contains"), ("a%2e", "contains"), ("a\x00b", "contains"),
    ("x" * MAX_BLOB_NAME, "1024 characters"), ("/".join(["d"] * 300), "254 segments"),
])
def test_paths_that_leave_the_run_or_change_the_url_are_refused_with_the_reason(path: object, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(".", r"\.")):
        check_path(path, prefix_of=RUN)


@pytest.mark.parametrize(("sent", "stored"), [("./outputs/model.pt", "outputs/model.pt"), ("a/./b", "a/b"),
                                              ("././logs/x.txt", "logs/x.txt")])
def test_dot_segments_are_dropped_as_azure_drops_them(sent: str, stored: str) -> None:
    # azureml-core uploads outputs/ at the end of a run as os.walk("./outputs") names them.
    assert check_path(sent, prefix_of=RUN) == stored
