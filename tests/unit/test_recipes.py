"""The recipes shipped inside the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from coi_async.orchestration.images.base import load_base_recipe
from coi_async.recipes import BASE_DIR, COI_SCRIPT, DUMMY, TOOL_SCRIPT, files_hash

CHECKOUT_FAKE_CLI = Path(__file__).resolve().parents[2] / "images" / "fake-claude" / "claude"


def test_the_shipped_test_stub_is_the_fake_cli_of_the_checkout() -> None:
    if not CHECKOUT_FAKE_CLI.is_file():
        pytest.skip("not running from a checkout")
    assert DUMMY.read_bytes() == CHECKOUT_FAKE_CLI.read_bytes(), (
        "copy images/fake-claude/claude to src/coi_async/recipes/dummy"
    )


def test_recipes_are_executable_and_the_base_recipe_parses() -> None:
    for script in (COI_SCRIPT, TOOL_SCRIPT, DUMMY, BASE_DIR / "setup.sh"):
        assert script.stat().st_mode & 0o111, script
    recipe = load_base_recipe()
    assert recipe.suite == "bookworm"
    assert "systemd" in recipe.packages
    assert len(recipe.hash) == 64


def test_recipe_hash_changes_with_content_mode_and_extras(tmp_path: Path) -> None:
    script = tmp_path / "build.sh"
    script.write_text("echo 1\n")
    first = files_hash(script)
    assert files_hash(script) == first
    assert files_hash(script, extra=("base",)) != first
    script.chmod(0o755)
    assert files_hash(script) != first
    script.write_text("echo 2\n")
    assert files_hash(script) != first


def test_coi_request_is_a_core_step_then_one_step_per_tool_in_registry_order() -> None:
    from coi_async.errors import ConfigError
    from coi_async.orchestration.images.request import coi_request

    default = coi_request()
    assert default.tools == ("claude",)
    assert [s.name for s in default.steps] == ["core", "claude"]
    assert default.steps[1].env == {
        "COI_TOOL_PACKAGE": "@anthropic-ai/claude-code",
        "COI_TOOL_BINARY": "claude",
    }
    # Any order, duplicates too: the same set is the same steps, so it reuses the same layers.
    four = coi_request(tools=["opencode", "codex", "gemini", "claude", "codex"])
    assert four.tools == ("claude", "codex", "gemini", "opencode")
    assert [s.name for s in four.steps] == ["core", "claude", "codex", "gemini", "opencode"]
    assert [s.env["COI_TOOL_PACKAGE"] for s in four.steps[1:]] == [
        "@anthropic-ai/claude-code",
        "@openai/codex",
        "@google/gemini-cli",
        "opencode-ai",
    ]
    # Gemini CLI needs a newer Node.js than Debian 12's: its step gets one from the npm registry.
    assert [s.env.get("COI_NODE_MAJOR") for s in four.steps[1:]] == [None, None, "22", None]
    with pytest.raises(
        ConfigError, match=r"^unknown tool: aider \(supported: claude, codex, gemini, opencode\)$"
    ):
        coi_request(tools=["claude", "aider"])
    with pytest.raises(ConfigError, match="at least one tool"):
        coi_request(tools=[])


def test_a_layer_key_covers_its_step_and_everything_under_it(tmp_path: Path) -> None:
    from coi_async.orchestration.images.layers import step_keys
    from coi_async.orchestration.images.request import BuildRequest, BuildStep

    one, two = tmp_path / "one.sh", tmp_path / "two.sh"
    one.write_text("echo 1\n")
    two.write_text("echo 2\n")
    steps = (BuildStep(name="one", script=one), BuildStep(name="two", script=two, env={"A": "1"}))
    request = BuildRequest(alias="x", steps=steps)
    first = step_keys(request, "base-a")
    assert len(set(first)) == 2
    # A later step's change leaves the layers under it as they are...
    changed = BuildStep(name="two", script=two, env={"A": "2"})
    assert step_keys(BuildRequest(alias="x", steps=(steps[0], changed)), "base-a")[0] == first[0]
    # ...and an earlier step's, or the base's, changes every layer over it.
    one.write_text("echo 1 again\n")
    again = step_keys(request, "base-a")
    assert again[0] != first[0]
    assert again[1] != first[1]
    assert step_keys(request, "base-b")[1] != again[1]
    # The alias is not in it: two images with the same steps share their layers.
    assert step_keys(BuildRequest(alias="y", steps=steps), "base-a") == again
