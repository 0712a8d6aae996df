"""Retrain and auto-search config parsing, validation and per-layer resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn
from torch.nn.utils import parametrize

from lightning_prune.config import (
    FilterPruneSpec,
    NOutOfMSpec,
    RetrainConfig,
    load_auto_channel_prune_config,
    load_retrain_config,
    parse_auto_channel_prune_config,
)
from lightning_prune.errors import PruneConfigError

DATA = Path(__file__).parent / "data"


def bcp(ratio: float, extra: str = "") -> str:
    return f"filter_pruner {{ balanced_l2_norm_filter_prune {{ prune_ratio: {ratio} {extra} }} }}"


def nm(body: str = "") -> str:
    return f"n_out_of_m_pruner {{ l1_selective_prune {{ {body} }} }}"


def by_name(name: str, prune: str) -> str:
    return f'override_layer_configs {{ layer_name: "{name}" prune_config {{ {prune} }} }}'


def by_type(type_name: str, prune: str) -> str:
    return f'override_layer_types {{ layer_type: "{type_name}" prune_config {{ {prune} }} }}'


GLOBAL_FILTER = f"prune_config {{ {bcp(0.3)} }}"
GLOBAL_NM = f"prune_config {{ {nm()} }}"


class Net(nn.Module):
    """One layer of every interesting kind; resolution never runs forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, groups=16)
        self.block = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 8, 2)
        self.conv1d = nn.Conv1d(8, 8, 1)
        self.fc = nn.Linear(8, 4)


def resolve(text: str, model: nn.Module | None = None) -> dict:
    return RetrainConfig.from_string(text, source="test.cfg").resolve(model or Net())


# ---- AMCT example configs -------------------------------------------------------------------


class AmctNamedNet(nn.Module):
    """Layer names used by the AMCT example configs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.ModuleDict({"conv": nn.Conv2d(3, 32, 3)})
        block = nn.ModuleDict({"conv1": nn.Conv2d(32, 64, 3), "conv2": nn.Conv2d(64, 64, 3)})
        self.stage3 = nn.ModuleDict({"block0": block})
        self.backbone = nn.ModuleDict({"conv1": nn.Conv2d(64, 64, 1), "conv_last": nn.Conv2d(64, 64, 1)})
        self.classifier = nn.Linear(64, 10)


def test_amct_channel_prune_example_parses_unchanged() -> None:
    cfg = load_retrain_config(DATA / "amct_channel_prune.cfg")
    specs = cfg.resolve(AmctNamedNet())
    assert specs == {
        "stage3.block0.conv1": FilterPruneSpec(prune_ratio=0.25, channel_multiple=16),
        "stage3.block0.conv2": FilterPruneSpec(prune_ratio=0.5, channel_multiple=1),
        "backbone.conv1": FilterPruneSpec(prune_ratio=0.25, channel_multiple=16),
        "backbone.conv_last": FilterPruneSpec(prune_ratio=0.25, channel_multiple=16),
    }
    assert cfg.source == str(DATA / "amct_channel_prune.cfg")


def test_amct_selective_prune_example_parses_unchanged() -> None:
    specs = RetrainConfig.from_file(DATA / "amct_selective_prune.cfg").resolve(AmctNamedNet())
    assert specs["backbone.conv_last"] == NOutOfMSpec(n=2, m=4, update_freq=0)
    assert specs["stage3.block0.conv1"] == NOutOfMSpec(n=2, m=4, update_freq=4)
    assert "classifier" not in specs
    assert len(specs) == 5


def test_amct_combined_compression_example_is_refused_as_quantization() -> None:
    with pytest.raises(
        PruneConfigError, match=r"amct_compressed\.cfg.*quantization is not supported.*batch_num"
    ):
        load_retrain_config(DATA / "amct_compressed.cfg")


# ---- resolution --------------------------------------------------------------------------------


def test_global_filter_prunes_filter_candidates_only() -> None:
    spec = FilterPruneSpec(prune_ratio=0.3, channel_multiple=16)
    # No depthwise conv, ConvTranspose2d, Conv1d or BatchNorm; named_modules() order.
    assert list(resolve(GLOBAL_FILTER).items()) == [("conv", spec), ("block.0", spec), ("fc", spec)]


def test_global_n_out_of_m_covers_conv_transpose_and_depthwise() -> None:
    assert list(resolve(GLOBAL_NM)) == ["conv", "dw", "block.0", "up", "fc"]


def test_priority_name_over_type_over_global() -> None:
    text = "\n".join([GLOBAL_FILTER, by_type("Conv2d", bcp(0.5)), by_name("block.0", bcp(0.7))])
    specs = resolve(text)
    assert specs["conv"].prune_ratio == 0.5
    assert specs["block.0"].prune_ratio == 0.7
    assert specs["fc"].prune_ratio == 0.3


def test_skip_lists_win_over_overrides_and_are_unions() -> None:
    text = "\n".join(
        [
            GLOBAL_FILTER,
            by_name("conv", bcp(0.5)),
            by_name("fc", bcp(0.5)),
            'skip_layers: "conv"',
            'regular_prune_skip_types: "Linear"',
        ]
    )
    assert list(resolve(text)) == ["block.0"]
    text = f'{GLOBAL_NM}\nskip_layer_types: "Conv2d"\nregular_prune_skip_layers: "up"'
    assert list(resolve(text)) == ["fc"]


def test_mixing_filter_and_n_out_of_m_across_layers() -> None:
    specs = resolve("\n".join([GLOBAL_NM, by_name("conv", bcp(0.25, "ascend_optimized: false"))]))
    assert specs["conv"] == FilterPruneSpec(prune_ratio=0.25, channel_multiple=1)
    assert specs["up"] == NOutOfMSpec(n=2, m=4, update_freq=0)
    assert list(specs) == ["conv", "dw", "block.0", "up", "fc"]


def test_type_override_passes_over_layers_its_kind_cannot_prune() -> None:
    # A Conv2d filter override cannot touch the depthwise conv, which keeps the global N:M.
    specs = resolve("\n".join([GLOBAL_NM, by_type("Conv2d", bcp(0.5))]))
    assert isinstance(specs["conv"], FilterPruneSpec)
    assert isinstance(specs["dw"], NOutOfMSpec)


def test_override_only_config_without_global() -> None:
    assert resolve(by_name("up", nm("n: 1 m: 4"))) == {"up": NOutOfMSpec(n=1, m=4, update_freq=0)}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", (2, 4, 0)),
        ("n_out_of_m_type: M8N4 update_freq: 10", (4, 8, 10)),
        ("n_out_of_m_type: M16N8", (8, 16, 0)),
        ("n_out_of_m_type: M4N1", (1, 4, 0)),
        ("n: 3 m: 8", (3, 8, 0)),
        ("n_out_of_m_type: M8N2 n: 1 m: 64", (1, 64, 0)),  # explicit n, m win over the enum
    ],
)
def test_general_n_out_of_m(body: str, expected: tuple[int, int, int]) -> None:
    assert resolve(f"prune_config {{ {nm(body)} }}")["fc"] == NOutOfMSpec(*expected)


@pytest.mark.parametrize(
    ("extra", "multiple"),
    [("", 16), ("ascend_optimized: false", 1), ("channel_multiple: 8", 8), ("channel_multiple: 0", 16)],
)
def test_channel_multiple(extra: str, multiple: int) -> None:
    assert resolve(f"prune_config {{ {bcp(0.3, extra)} }}")["conv"].channel_multiple == multiple


def test_resolve_sees_through_parametrizations() -> None:
    class Mask(nn.Module):
        def forward(self, weight):
            return weight

    model = Net()
    parametrize.register_parametrization(model.conv, "weight", Mask())
    assert list(resolve(GLOBAL_FILTER, model)) == ["conv", "block.0", "fc"]


def test_duplicate_skip_entries_warn_and_are_removed() -> None:
    text = GLOBAL_FILTER + '\nskip_layers: "conv"\nskip_layers: "fc"\nskip_layers: "conv"'
    with pytest.warns(UserWarning, match=r"test\.cfg.*skip_layers.*'conv'.*more than once"):
        cfg = RetrainConfig.from_string(text, source="test.cfg")
    assert list(cfg.proto.skip_layers) == ["conv", "fc"]
    assert list(cfg.resolve(Net())) == ["block.0"]


def test_to_text_round_trips() -> None:
    cfg = RetrainConfig.from_string("\n".join([GLOBAL_NM, by_name("conv", bcp(0.3)), 'skip_layers: "fc"']))
    again = RetrainConfig.from_string(cfg.to_text())
    assert again.proto == cfg.proto
    assert again.resolve(Net()) == cfg.resolve(Net())


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.cfg"):
        load_retrain_config(tmp_path / "nope.cfg")


def test_parse_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "typo.cfg"
    path.write_text(f'# comment\n{GLOBAL_FILTER}\nskip_layer: "fc"\n')
    with pytest.raises(
        PruneConfigError, match=r"(?s)typo\.cfg:3:1: .*skip_layer.*did you mean `skip_layers`"
    ) as err:
        load_retrain_config(path)
    assert 'skip_layer: "fc"\n    ^' in str(err.value)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.cfg"
    path.write_text("  \n")
    with pytest.raises(PruneConfigError, match=r"empty\.cfg: the config is empty"):
        load_retrain_config(path)


# ---- bad configs ----------------------------------------------------------------------------

BAD_CONFIGS = [
    # Text-format errors: line:column, the offending field or value, and the valid choices.
    (
        "unknown-top-field",
        "prune_ratio: 0.3",
        r"test\.cfg:1:1: .*\"prune_ratio\".*did you mean `prune_config`",
    ),
    ("typo-top-field", f"prune_confg {{ {bcp(0.3)} }}", r"prune_confg.*did you mean `prune_config`"),
    (
        "typo-nested-field",
        "prune_config { filter_pruner { balanced_l2_norm_filter_prune { prune_rato: 0.3 } } }",
        r"test\.cfg:1:64: .*prune_rato.*did you mean `prune_ratio`.*valid fields here: prune_ratio",
    ),
    (
        "unknown-pattern",
        f"prune_config {{ {nm('n_out_of_m_type: M3N1')} }}",
        r"M3N1.*valid values: M4N2, M4N1",
    ),
    (
        "both-strategies",
        f"prune_config {{ {bcp(0.3)} {nm()} }}",
        r"either filter_pruner or n_out_of_m_pruner",
    ),
    (
        "repeated-scalar",
        f"prune_config {{ {bcp(0.3, 'prune_ratio: 0.4')} }}",
        r"multiple \"prune_ratio\".*only once",
    ),
    (
        "syntax",
        "prune_config {\n  filter_pruner {",
        r"test\.cfg:2:\d+: cannot parse.*HINT: protobuf text format",
    ),
    ("string-unquoted", f"{GLOBAL_FILTER} skip_layers: conv", r"Expected string.*HINT: .*double quotes"),
    ("comments-only", "# nothing here\n", r"no prune_config"),
    # Quantization.
    (
        "quant-batch-num",
        f"batch_num: 2 {GLOBAL_FILTER}",
        r"quantization is not supported.*remove `batch_num`",
    ),
    (
        "quant-skip",
        f'{GLOBAL_FILTER} quant_skip_layers: "fc"',
        r"remove `quant_skip_layers` \(it configures QAT\)",
    ),
    (
        "quant-precision",
        f"{GLOBAL_FILTER} fakequant_precision_mode: FORCE_FP16_QUANT",
        r"remove `fakequant_precision_mode`",
    ),
    (
        "quant-in-override",
        'override_layer_configs { layer_name: "conv" retrain_weight_quant_config { arq_retrain {} } }',
        r"remove `override_layer_configs\[0\]\.retrain_weight_quant_config`",
    ),
    (
        "quant-unknown-subfield",
        "retrain_data_quant_config { ulq_quantize { clip_mx: 1 } }",
        r"test\.cfg:1:44: quantization is not supported.*retrain_data_quant_config",
    ),
    # Missing pieces.
    ("no-prune-config", 'skip_layers: "conv"', r"test\.cfg: no prune_config.*HINT: add `prune_config"),
    (
        "no-strategy",
        "prune_config {}",
        r"`prune_config` sets no pruning strategy.*HINT: write `filter_pruner",
    ),
    (
        "no-filter-algo",
        f"{GLOBAL_NM} {by_name('conv', bcp(0.3))} {by_name('fc', 'filter_pruner {}')}",
        r"`override_layer_configs\[1\]\.prune_config\.filter_pruner` \(layer_name \"fc\"\) sets no algorithm",
    ),
    (
        "no-nm-algo",
        "prune_config { n_out_of_m_pruner {} }",
        r"`prune_config\.n_out_of_m_pruner` sets no algorithm",
    ),
    (
        "no-ratio",
        "prune_config { filter_pruner { balanced_l2_norm_filter_prune { } } }",
        r"`prune_config\.filter_pruner\.balanced_l2_norm_filter_prune\.prune_ratio` is missing",
    ),
    (
        "override-no-name",
        f"override_layer_configs {{ prune_config {{ {bcp(0.3)} }} }}",
        r"`override_layer_configs\[0\]` has no layer_name",
    ),
    (
        "override-no-prune",
        'override_layer_configs { layer_name: "conv" }',
        r"\(layer_name \"conv\"\) has no prune_config",
    ),
    # Values.
    (
        "ratio-one",
        f"prune_config {{ {bcp(1.0)} }}",
        r"prune_ratio` must be in the open interval \(0, 1\), got 1\.0",
    ),
    ("ratio-zero", f"prune_config {{ {bcp(0)} }}", r"got 0\.0\. HINT: use the fraction"),
    ("ratio-negative", f"prune_config {{ {bcp(-0.2)} }}", r"got -0\.2\b"),
    ("ratio-nan", f"prune_config {{ {bcp('nan')} }}", r"got nan"),
    (
        "override-ratio",
        f"{GLOBAL_FILTER} {by_name('fc', bcp(1.5))}",
        r"`override_layer_configs\[0\]\.prune_config\.filter_pruner.*prune_ratio` \(layer_name \"fc\"\).*got 1\.5",
    ),
    ("n-without-m", f"prune_config {{ {nm('n: 2')} }}", r"l1_selective_prune` sets only n.*set both n and m"),
    ("n-not-below-m", f"prune_config {{ {nm('n: 4 m: 4')} }}", r"has n=4, m=4; need 0 < n < m <= 64"),
    ("n-zero", f"prune_config {{ {nm('n: 0 m: 4')} }}", r"has n=0, m=4"),
    ("m-too-large", f"prune_config {{ {nm('n: 2 m: 128')} }}", r"m=128; need 0 < n < m <= 64"),
    ("update-freq", f"prune_config {{ {nm('update_freq: -1')} }}", r"update_freq` must be >= 0, got -1"),
    # Duplicates and types.
    (
        "dup-layer-name",
        f"{by_name('conv', bcp(0.3))} {by_name('conv', nm())}",
        r"`override_layer_configs\[1\]` \(layer_name \"conv\"\) repeats .* of `override_layer_configs\[0\]`.*HINT: merge",
    ),
    (
        "dup-layer-type",
        f"{by_type('Linear', bcp(0.3))} {by_type('Linear', bcp(0.5))}",
        r"`override_layer_types\[1\]` \(layer_type \"Linear\"\) repeats layer_type",
    ),
    (
        "skip-type-unsupported",
        f'{GLOBAL_FILTER} skip_layer_types: "BatchNorm2d"',
        r"`skip_layer_types\[0\]` names type \"BatchNorm2d\".*Conv2d, Linear, ConvTranspose2d",
    ),
    ("type-typo", f"{by_type('conv2d', bcp(0.3))}", r"names type \"conv2d\".*did you mean `Conv2d`"),
    ("type-qualified", f'{GLOBAL_FILTER} regular_prune_skip_types: "nn.Linear"', r"did you mean `Linear`"),
    (
        "type-wrong-kind",
        f"{by_type('ConvTranspose2d', bcp(0.3))}",
        r"`override_layer_types\[0\]\.layer_type` names type \"ConvTranspose2d\", which filter_pruner.*only n_out_of_m",
    ),
    # Against the model.
    (
        "unknown-layer",
        f'{GLOBAL_FILTER} skip_layers: "convv"',
        r"`skip_layers\[0\]` names layer \"convv\", which the model does not have.*did you mean `conv`",
    ),
    (
        "unknown-override-layer",
        f"{by_name('blok.0', bcp(0.3))}",
        r"`override_layer_configs\[0\]\.layer_name` names layer \"blok\.0\".*did you mean `block\.0`",
    ),
    (
        "container-name",
        f'{GLOBAL_FILTER} regular_prune_skip_layers: "block"',
        r"layer \"block\", a Sequential, which is never pruned.*not prefixes; list the layers inside: block\.0",
    ),
    ("skip-batchnorm", f'{GLOBAL_FILTER} skip_layers: "bn"', r"\"bn\", a BatchNorm2d, which is never pruned"),
    (
        "filter-on-batchnorm",
        f"{by_name('bn', bcp(0.3))}",
        r"asks filter_pruner for layer \"bn\", a BatchNorm2d.*supports Conv2d, Linear",
    ),
    (
        "filter-on-depthwise",
        f"{GLOBAL_NM} {by_name('dw', bcp(0.3))}",
        r"layer \"dw\", a depthwise Conv2d.*pruned passively.*n_out_of_m_pruner",
    ),
    (
        "nm-on-conv1d",
        f"{by_name('conv1d', nm())}",
        r"asks n_out_of_m_pruner for layer \"conv1d\", a Conv1d.*Conv2d, Linear, ConvTranspose2d",
    ),
    (
        "nothing-pruned",
        f'{GLOBAL_FILTER} skip_layer_types: "Conv2d" regular_prune_skip_types: "Linear"',
        r"no layer of the model is pruned by test\.cfg: the model has 3 filter-prunable.*HINT",
    ),
]


@pytest.mark.parametrize(
    ("text", "match"), [row[1:] for row in BAD_CONFIGS], ids=[row[0] for row in BAD_CONFIGS]
)
def test_bad_config_message(text: str, match: str) -> None:
    with pytest.raises(PruneConfigError, match=f"(?s){match}") as err:
        resolve(text)
    message = str(err.value)
    assert "test.cfg" in message
    assert "HINT: " in message


# ---- auto channel-prune search config -------------------------------------------------------------


def test_auto_config_example(tmp_path: Path) -> None:
    (tmp_path / "keep_head.cfg").write_text(f'{by_name("fc", bcp(0.1))}\nregular_prune_skip_layers: "conv"\n')
    (tmp_path / "search").mkdir()
    path = tmp_path / "search" / "auto.cfg"
    path.write_text(
        "compress_ratio: 1.3\nascend_optimized: true\nmax_prune_ratio: 0.7\n"
        'test_iteration: 4\noverride_prune_cfg: "../keep_head.cfg"\n'
    )
    cfg = load_auto_channel_prune_config(path)
    assert cfg.compress_ratio == pytest.approx(1.3)
    assert cfg.max_prune_ratio == pytest.approx(0.7)
    assert cfg.test_iteration == 4
    assert Path(cfg.override_prune_cfg) == (tmp_path / "keep_head.cfg").resolve()


def test_auto_config_defaults() -> None:
    cfg = parse_auto_channel_prune_config("compress_ratio: 2")
    assert (cfg.ascend_optimized, cfg.max_prune_ratio, cfg.test_iteration) == (True, 1.0, 1)
    assert not cfg.HasField("override_prune_cfg")


BAD_AUTO_CONFIGS = [
    ("missing-ratio", "max_prune_ratio: 0.5", r"`compress_ratio` is missing"),
    ("ratio-one", "compress_ratio: 1", r"`compress_ratio` must be a finite number > 1, got 1\.0"),
    ("ratio-below-one", "compress_ratio: 0.8", r"got 0\.8"),
    ("ratio-inf", "compress_ratio: inf", r"got inf"),
    (
        "max-zero",
        "compress_ratio: 1.3 max_prune_ratio: 0",
        r"`max_prune_ratio` must be in \(0, 1\], got 0\.0",
    ),
    ("max-above-one", "compress_ratio: 1.3 max_prune_ratio: 1.5", r"got 1\.5"),
    ("iterations", "compress_ratio: 1.3 test_iteration: 0", r"`test_iteration` must be >= 1, got 0"),
    ("unknown-field", "compress_ratio: 1.3 compression_ratio: 2", r"did you mean `compress_ratio`"),
    ("empty", "", r"the config is empty"),
    (
        "missing-override",
        'compress_ratio: 1.3 override_prune_cfg: "missing.cfg"',
        r"`override_prune_cfg` names \"missing\.cfg\", which is not a file \(looked for .*missing\.cfg\)",
    ),
    (
        "override-global",
        f'compress_ratio: 1.3 override_prune_cfg: "o.cfg"\n#o.cfg {GLOBAL_FILTER}',
        r"o\.cfg: `prune_config` is not allowed in an override_prune_cfg",
    ),
    (
        "override-nm",
        f'compress_ratio: 1.3 override_prune_cfg: "o.cfg"\n#o.cfg {by_name("fc", nm())}',
        r"o\.cfg: `override_layer_configs\[0\]` \(layer_name \"fc\"\) sets n_out_of_m_pruner",
    ),
    (
        "override-quant",
        'compress_ratio: 1.3 override_prune_cfg: "o.cfg"\n#o.cfg batch_num: 4',
        r"o\.cfg: quantization is not supported.*batch_num",
    ),
    (
        "override-bad-ratio",
        f'compress_ratio: 1.3 override_prune_cfg: "o.cfg"\n#o.cfg {by_name("fc", bcp(2))}',
        r"o\.cfg: .*prune_ratio` \(layer_name \"fc\"\) must be in the open interval \(0, 1\), got 2\.0",
    ),
]


@pytest.mark.parametrize(
    ("text", "match"), [r[1:] for r in BAD_AUTO_CONFIGS], ids=[r[0] for r in BAD_AUTO_CONFIGS]
)
def test_bad_auto_config_message(tmp_path: Path, text: str, match: str) -> None:
    # A trailing "#o.cfg <text>" line holds the content of the override file o.cfg.
    text, _, override = text.partition("\n#o.cfg ")
    if override:
        (tmp_path / "o.cfg").write_text(override)
    path = tmp_path / "auto.cfg"
    path.write_text(text)
    with pytest.raises(PruneConfigError, match=match) as err:
        load_auto_channel_prune_config(path)
    assert ".cfg" in str(err.value)
    assert "HINT: " in str(err.value)


def test_auto_config_override_file_with_skips_only(tmp_path: Path) -> None:
    (tmp_path / "o.cfg").write_text('skip_layers: "fc"\nregular_prune_skip_types: "Linear"\n')
    cfg = parse_auto_channel_prune_config(
        'compress_ratio: 1.5 override_prune_cfg: "o.cfg"', str(tmp_path / "a.cfg")
    )
    assert cfg.override_prune_cfg == str((tmp_path / "o.cfg").resolve())
