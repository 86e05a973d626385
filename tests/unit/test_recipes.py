"""The recipes shipped inside the package."""

from __future__ import annotations

from pathlib import Path

import pytest

from coi_async.orchestration.images.base import load_base_recipe
from coi_async.recipes import BASE_DIR, COI_SCRIPT, DUMMY, files_hash

CHECKOUT_FAKE_CLI = Path(__file__).resolve().parents[2] / "images" / "fake-claude" / "claude"


def test_the_shipped_test_stub_is_the_fake_cli_of_the_checkout() -> None:
    if not CHECKOUT_FAKE_CLI.is_file():
        pytest.skip("not running from a checkout")
    assert DUMMY.read_bytes() == CHECKOUT_FAKE_CLI.read_bytes(), (
        "copy images/fake-claude/claude to src/coi_async/recipes/dummy"
    )


def test_recipes_are_executable_and_the_base_recipe_parses() -> None:
    for script in (COI_SCRIPT, DUMMY, BASE_DIR / "setup.sh"):
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


def test_coi_request_installs_the_tools_asked_for() -> None:
    from coi_async.errors import ConfigError
    from coi_async.orchestration.images.build import coi_request

    default = coi_request()
    assert default.tools == ("claude",)
    assert default.env == {"COI_TOOL_PACKAGES": "@anthropic-ai/claude-code"}
    four = coi_request(tools=["claude", "codex", "opencode", "gemini", "codex"])
    assert four.tools == ("claude", "codex", "opencode", "gemini")
    assert (
        four.env["COI_TOOL_PACKAGES"]
        == "@anthropic-ai/claude-code @openai/codex opencode-ai @google/gemini-cli"
    )
    with pytest.raises(
        ConfigError, match=r"^unknown tool: aider \(supported: claude, codex, gemini, opencode\)$"
    ):
        coi_request(tools=["claude", "aider"])
    with pytest.raises(ConfigError, match="at least one tool"):
        coi_request(tools=[])
