"""The paper's reference values, in one place, for the report and for checks.

Sources: the paper (Longon, "Naturally Computed Scale Invariance in the Residual Stream of ResNet18",
text in ``shared/paper/longon-scale-invariance-resnet18.txt``) and the authors' published code
(github.com/cest-andre/residual-stream-interp). Where a value is from the code, the file and commit are
named: ``scale_robust.py`` at commit 6b74452 (2025-02-19, "Updated methods, fig gen, added custom
ablatable resnet"), the last version of that file. Blocks are written ``L.K`` (torchvision's
``layerL[K]``); channels are zero-indexed, as in the paper's figures.
"""

from __future__ import annotations

from types import MappingProxyType

from rsi.config import PROBED_BLOCKS

# Blocks whose channels the paper probed with Eq. 1 and Eq. 2 (rsi.config.PROBED_BLOCKS, the default of
# criteria.blocks and natural.blocks). Section 3, "Results": "We probed all the channels from blocks 1.1 to 4.1".

# Channels per block (In, Pre and Post have the same width): torchvision's ResNet18.
BLOCK_CHANNELS = MappingProxyType(
    {"1.1": 64, "2.0": 128, "2.1": 128, "3.0": 256, "3.1": 256, "4.0": 512, "4.1": 512}
)

# Criteria-passing channels per block. Section 3, "Results": "four blocks contained at least one
# criteria-passing channel: 1.1 with six channels (~9.4 % of all channels in block), 2.0 with two
# (~1.5 %), 2.1 with 23 (~18 %), and 3.1 with 46 channels (curiously, ~18 % as well)". The other probed
# blocks (3.0, 4.0, 4.1) had none.
PASSING_COUNTS = MappingProxyType({"1.1": 6, "2.0": 2, "2.1": 23, "3.0": 0, "3.1": 46, "4.0": 0, "4.1": 0})

# The percentages as printed (all approximate, "~"); section 3, "Results". Exact count/width values are
# 9.375, 1.5625, 17.97 and 17.97; the paper rounds 2/128 down to 1.5.
PASSING_PERCENT = MappingProxyType(
    {"1.1": 9.4, "2.0": 1.5, "2.1": 18.0, "3.0": 0.0, "3.1": 18.0, "4.0": 0.0, "4.1": 0.0}
)

# The authors' published passing lists, in their order: scale_robust.py @ 6b74452, ``scale_inv_2_1`` and
# ``scale_inv_3_1`` (the sets they mean-ablated; 23 and 46 channels, matching the counts above).
PUBLISHED_PASSING = MappingProxyType(
    {
        "2.1": (108, 21, 25, 127, 56, 47, 18, 52, 35, 67, 48, 72, 110, 106, 105, 13, 15, 88, 30, 124, 31, 36, 68),
        "3.1": (
            113, 198, 67, 69, 204, 188, 164, 137, 144, 149, 147, 132, 180, 88, 126, 141, 48, 135, 187, 250, 158,
            29, 178, 161, 163, 13, 153, 14, 80, 206, 220, 179, 215, 16, 192, 9, 59, 200, 63, 1, 100, 58, 168,
            117, 226, 22,
        ),
    }
)  # fmt: skip

# Exemplary passing channels the text names. Section 3, "Results", on block 3.1 (Fig. 1, bottom row):
# "oriented cylinders (channels 29, 113, 178), a spotted texture (80), and a complex curve (215)".
# The text names no channel of Fig. 1's top row (block 2.1).
EXEMPLARY_CHANNELS = MappingProxyType({"3.1": (29, 113, 178, 80, 215)})

# Channel labels of the appendix's Fig. 3 ("all remaining ... criteria-passing channels in blocks 1.1, 2.0,
# and 2.1") as they survive in the text extraction: "2.0: channel 50", "2.1: channel 13", and the bare
# labels 18, 31, 25, 30, 35, 36, 47 beside the 2.1 grids. Partial (the figure is an image); every 2.1
# label is in PUBLISHED_PASSING["2.1"].
FIGURE3_LABELS = MappingProxyType({"2.0": (50,), "2.1": (13, 18, 25, 30, 31, 35, 36, 47)})

# Scale factors of the authors' ablation sweep (scale_robust.py @ 6b74452: np.arange(1.1, 1.6, 0.1)),
# i.e. the text's 10 % ... 50 % (section 4).
ABLATION_SCALES: tuple[float, ...] = (1.1, 1.2, 1.3, 1.4, 1.5)

# Top-1 ImageNet-val accuracy (%) with the *passing set* of a block mean-ablated at Post, from the
# comments of scale_robust.py @ 6b74452: "2.1 post-relu mean ablate accs (clamped to zero BEFORE mean is
# taken)" vanilla_acc = 63.75, up_accs = [61.394, 59.39, 56.222, 51.686, 44.292]; "3.1 post-relu mean
# ablate accs (clamped to zero BEFORE mean is taken)" vanilla_acc = 63.493, up_accs = [61.712, 60.194,
# 57.424, 53.358, 46.704]. ``no_scale`` is their vanilla_acc; ``scaled`` follows ABLATION_SCALES.
PASSING_ABLATION_ACCURACY = MappingProxyType(
    {
        "2.1": MappingProxyType({"no_scale": 63.75, "scaled": (61.394, 59.39, 56.222, 51.686, 44.292)}),
        "3.1": MappingProxyType({"no_scale": 63.493, "scaled": (61.712, 60.194, 57.424, 53.358, 46.704)}),
    }
)


# The evaluation set: ImageNet-1k validation (section 4), all of it.
EVAL_IMAGES = 50_000
EVAL_CLASSES = 1000

# The JPEG decoder behind the authors' ImageFolder: their environment.yml pins conda's jpeg=9e (IJG
# libjpeg 9e) with pillow=10.3.0 and no libjpeg-turbo. IJG libjpeg 7 and later upsample chroma otherwise
# than libjpeg-turbo (our Pillow wheels), so decoded pixels can differ (rsi.data records ours).
AUTHORS_DECODER = "IJG libjpeg 9e"

# FZ optimisation as the authors ran it (the paper text gives no step count): center_lucent_optimize.py's
# thresholds=(2560,), lucent's Adam learning rate and the 224 px image of param.image(224, decorrelate=True).
FZ_STEPS = 2560
FZ_LR = 0.05
FZ_IMAGE_SIZE = 224

# Random-set trials per scale of the ablation (section 4).
ABLATION_TRIALS = 10

# The FZ jitter J of every tap of a block as the authors' batch_process.sh ran it (DESIGN; the paper's §7.1
# text reads 2.1's Post at 16). rsi.fz.DEFAULT_BLOCKS holds the same values (tests/test_report.py).
AUTHORS_JITTER = MappingProxyType(
    {"1.0": 0, "1.1": 0, "2.0": 0, "2.1": 4, "3.0": 4, "3.1": 16, "4.0": 16, "4.1": 16}
)


def passing_percent_exact(block: str) -> float:
    """The paper's count as an exact percentage of the block's channels (100 · count / width)."""
    return 100.0 * PASSING_COUNTS[block] / BLOCK_CHANNELS[block]


# The values above as one plain mapping, as rsi.report reads them:
# block keys ``L.K``; ablation accuracies keyed by the scale percentage ("0" = no scale, "10" = 1.1 …).
REFERENCE: dict[str, object] = {
    "source": (
        "rsi.paper: the paper text (section 3 results, Fig. 3 labels) and the authors' "
        "scale_robust.py @ 6b74452 (passing lists, passing-set ablation accuracies)"
    ),
    "probed_blocks": list(PROBED_BLOCKS),
    "passing": dict(PASSING_COUNTS),
    "percent_text": {b: f"~{PASSING_PERCENT[b]:g}" for b, n in PASSING_COUNTS.items() if n},
    # full lists for 2.1 and 3.1 (scale_robust.py); 2.0 only as far as Fig. 3's legible label; 1.1 unknown
    "channels": {"2.0": list(FIGURE3_LABELS["2.0"]), **{b: list(c) for b, c in PUBLISHED_PASSING.items()}},
    "channels_complete": False,
    "channels_complete_blocks": sorted(PUBLISHED_PASSING),
    "exemplary": {b: list(c) for b, c in EXEMPLARY_CHANNELS.items()},
    # section 4 / Fig. 2: all scale-transformed ratios lie below the no-scale ratio (no numbers printed)
    "ablation_claim": "every scale's ratio (10 % … 50 %) is below the no-scale ratio",
    "ablation_passing_acc": {
        block: {
            "0": acc["no_scale"],
            **{str(round((s - 1) * 100)): a for s, a in zip(ABLATION_SCALES, acc["scaled"], strict=True)},
        }
        for block, acc in PASSING_ABLATION_ACCURACY.items()
    },
    "ablation_channels_authors_code": {b: list(c) for b, c in PUBLISHED_PASSING.items()},
}
