"""Options are named in the spelling of where the user wrote them: Python, the command line, YAML."""

from pdl_trl.spelling import COMMAND_LINE, YAML, command_line, option, options_written_in


def test_option_in_each_spelling():
    assert option("pdl_alpha", 0.5) == "`pdl_alpha=0.5`"
    assert option("pdl_allow_unmasked_text", True) == "`pdl_allow_unmasked_text=True`"
    with options_written_in(COMMAND_LINE):
        assert option("pdl_alpha", 0.5) == "`--pdl_alpha 0.5`"
        assert option("pdl_allow_unmasked_text", True) == "`--pdl_allow_unmasked_text`"
        assert option("pdl_neutral_special_tokens", False) == "`--pdl_neutral_special_tokens false`"
        assert option("dataset_train_split") == "`--dataset_train_split`"
    with options_written_in(YAML):
        assert option("pdl_allow_unmasked_text", True) == "`pdl_allow_unmasked_text: true`"
        assert option("pdl_counts_path", None) == "`pdl_counts_path: null`"
    # Outside the blocks, Python again
    assert option("pdl_mix") == "`pdl_mix`"


def test_a_command_spells_flags_even_when_it_raises():
    @command_line
    def command():
        raise ValueError(f"set {option('pdl_mix', 0.5)}")

    try:
        command()
    except ValueError as error:
        assert str(error) == "set `--pdl_mix 0.5`"
    assert option("pdl_mix", 0.5) == "`pdl_mix=0.5`"
