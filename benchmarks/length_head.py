"""The one-pass length head against a search, on held-out video, side by side with simpler heads.

    python benchmarks/length_head.py --train T/*.mp4 T/*.jpg --eval H/*.avi H/*.mp4 --cache runs/length-head \
        [--model default] [--thresholds mse:0.02,mse:0.03,mse:0.05] [--save FILE]

Records every block's MSE at every 8th token count (``elastictok.training.length_head.collect_curves``;
cached in ``--cache`` as train.curves.pt / heldout.curves.pt, slow: about 3 s per block on one core;
training videos as clips of the blocks in ``--train-spans``, held-out ones whole),
fits heads on the training curves and prints, per threshold, the share of held-out blocks whose count
is more than 8 tokens from the grid search's, the share that miss a threshold their block can reach,
and the tokens spent (curves read linearly in log MSE between grid counts). Variants: the shipped design
(predicted curve, told the all-token MSE, an ensemble of 5, aiming 10% below the threshold), other
margins, one member, no all-token MSE, and the previous design (the count itself regressed from
encoder features, one head per threshold). ``--save`` writes
the shipped design's head.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from elastictok.models.registry import from_pretrained
from elastictok.tokenization.length_head import DEFAULT_MARGIN, first_crossing, threshold_mse
from elastictok.media.transforms import to_model
from elastictok.tokenization.targets import parse_target
from elastictok.tokenization.tokenizer import read_source
from elastictok.training.length_head import Curves, collect_curves, fit_length_head, score_length_head


def pieces(model, paths: list[str], spans: list[tuple[int, int]]) -> list:
    """Images as they are; each video cut into clips of blocks [start, end) for each span (skipped if empty)."""
    inputs = []
    for path in paths:
        info, blocks = read_source(model, path)
        if info.is_image:
            inputs.append(path)
            continue
        blocks = [to_model(b) for k, b in enumerate(blocks) if k < max(end for _, end in spans)]
        inputs += [torch.cat(blocks[start:end]) for start, end in spans if blocks[start:end]]
    return inputs


def cached_curves(model, inputs: Callable[[], list], target, path: Path) -> Curves:
    """The curves cached at ``path``, else those of ``inputs()``, recorded and cached."""
    if path.is_file():
        return Curves.load(path)
    curves = collect_curves(model, inputs(), target, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    curves.save(path)
    return curves


def fit_mlp(x: torch.Tensor, y: torch.Tensor, steps: int = 2000) -> nn.Module:
    """A plain MLP regression (for the variants the library does not ship)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.LayerNorm(x.shape[1]), nn.Linear(x.shape[1], 256), nn.GELU(), nn.Linear(256, y.shape[1]))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    for _ in range(steps):
        loss = (net(x) - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def row(threshold: str, name: str, scores: dict[str, float]) -> None:
    print(f"| {threshold} | {name} | {scores['off']:.1%} | {scores['fails']:.1%} | {scores['mean_tokens']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--eval", nargs="+", required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--context", default="mse:0.05", help="target whose search sets each block's context")
    parser.add_argument("--thresholds", default="mse:0.02,mse:0.03,mse:0.05")
    parser.add_argument("--train-spans", default="0:24", help="blocks of each training video to record, as "
                        "clips of their own (default: %(default)s)")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--save", type=Path, help="write the shipped design's head here")
    args = parser.parse_args()
    model = from_pretrained(args.model).eval()
    context = parse_target(args.context)
    spans = [tuple(int(v) for v in span.split(":")) for span in args.train_spans.split(",")]
    train = cached_curves(model, lambda: pieces(model, args.train, spans), context, args.cache / "train.curves.pt")
    held = cached_curves(model, lambda: args.eval, context, args.cache / "heldout.curves.pt")
    print(f"{len(train.mse)} training blocks, {len(held.mse)} held-out blocks, counts every "
          f"{int(train.counts[1] - train.counts[0])} from {int(train.counts[0])} to {int(train.counts[-1])}\n")
    heads = {f"curve + all-token MSE, 5 members, margin {DEFAULT_MARGIN} (shipped)": fit_length_head(model, train)[0]}
    for margin in (0.0, 0.2):
        heads[f"the same, margin {margin}"] = fit_length_head(model, train, margin=margin)[0]
    heads["the same, 1 member"] = fit_length_head(model, train, members=1)[0]
    features = train.inputs.shape[1] - 1  # the last input is the all-token MSE
    absolute = fit_mlp(train.inputs[:, :features], train.log_mse)
    print("| threshold | head | > 8 tokens off | misses | tokens per block |\n|---|---|---|---|---|")
    for text in args.thresholds.split(","):
        target = parse_target(text)
        value = threshold_mse(target)
        print(f"| {text} | search over the grid | 0 | 0 | {held.searched(value).float().mean():.1f} |")
        for name, fitted in heads.items():
            row(text, name, score_length_head(fitted, held, target))
        with torch.no_grad():
            goal = math.log(value) - DEFAULT_MARGIN
            predicted = first_crossing(absolute(held.inputs[:, :features]), held.counts, goal)
        row(text, "curve without the all-token MSE", held.compare(predicted, value))
        m = int(train.counts[-1])
        share = fit_mlp(train.inputs[:, :features - 5], train.searched(value)[:, None].float() / m)
        with torch.no_grad():
            direct = (share(held.inputs[:, :features - 5])[:, 0] * m).round().long()
        row(text, "count from encoder features (previous design)", held.compare(direct, value))
    if args.save:
        next(iter(heads.values())).save(args.save)
        print(f"\nhead -> {args.save}")


if __name__ == "__main__":
    main()
