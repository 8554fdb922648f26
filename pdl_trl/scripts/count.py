"""
`pdl-trl count`: counts how often each token is a training target (a completion token) in a corpus, and writes the
counts file that `--pdl_counts_path` reads.

Takes the arguments of `pdl-trl sft` (so the training config file can be reused as is) plus `--counts_output`. The
data is prepared by the trainer itself, so the file equals the table of a training run with the same data and
preparation arguments (`pdl_trl.counting`).

```bash
pdl-trl count --config examples/conversational_assistant_only.yaml --counts_output capybara_counts.json
pdl-trl count --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name data.jsonl --counts_output counts.json
```
"""

import argparse

from accelerate import PartialState
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

from pdl_trl.counting import PDLCountConfig, count_corpus
from pdl_trl.scripts.utils import parse_script_args, run_command
from pdl_trl.spelling import command_line


@command_line
def main(script_args, training_args, model_args, dataset_args):
    counts = count_corpus(script_args, training_args, model_args, dataset_args)
    if PartialState().is_main_process:
        seen = int((counts.counts > 0).sum())
        print(
            f"Counted {counts.num_tokens} completion tokens ({seen} of {counts.vocab_size} types seen) into "
            f"{training_args.counts_output}."
        )
    return counts


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None):
    dataclass_types = (ScriptArguments, PDLCountConfig, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        return subparsers.add_parser(
            "count", help="Count the completion tokens of a corpus", dataclass_types=dataclass_types
        )
    return TrlParser(dataclass_types, prog=prog)


@command_line
def run(argv: list[str]) -> int:
    """
    What `pdl-trl count ARGS` runs, in this process; under a launcher use `torchrun -m pdl_trl.scripts.count` (see
    docs/distributed.md).
    """
    main(*parse_script_args(make_parser(prog="pdl-trl count"), argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("pdl-trl count", lambda: main(*parse_script_args(make_parser(prog="pdl-trl count")))))
