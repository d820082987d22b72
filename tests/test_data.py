from pathlib import Path

import pytest
from omegaconf import OmegaConf

from deepcuts.config.errors import ConfigError
from deepcuts.data.glue import GlueDataModule
from deepcuts.models.module import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    from tests.conftest import compose_cfg

    return load_tokenizer(compose_cfg(Path("/tmp/unused")).model.tokenizer)


def module(make_cfg, tok, *overrides, **kwargs):
    cfg = make_cfg(*overrides)
    args = {**OmegaConf.to_container(cfg.data, resolve=True), **kwargs}
    return GlueDataModule(tok, **args, seed=0)


def test_cola_headerless_dev_is_read_whole(make_cfg, tok):
    dm = module(make_cfg, tok, "data=cola", "data.max_eval_samples=null")
    dm.setup()
    labels = dm.splits["eval"]["labels"]
    assert len(labels) == 1043 and sum(labels) == 721  # GLUE CoLA dev: 721 acceptable


def test_sst2_dev_and_subsample(make_cfg, tok):
    dm = module(make_cfg, tok, "data=sst2", "data.max_eval_samples=null", "data.max_train_samples=100")
    dm.setup()
    assert len(dm.splits["eval"]) == 872 and sum(dm.splits["eval"]["labels"]) == 444
    assert len(dm.splits["train"]) == 100


def test_stsb_pairs_have_segment_ids_and_float_scores(make_cfg, tok):
    dm = module(make_cfg, tok, "data=stsb")
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["token_type_ids"].max() == 1  # second sentence
    assert batch["labels"].dtype.is_floating_point
    assert (batch["labels"] >= 0).all() and (batch["labels"] <= 5).all()
    # dynamic padding: the batch is as long as its longest example, not max_length
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())


def test_tokenised_sets_are_cached(make_cfg, tok, tmp_path):
    first = module(make_cfg, tok, "data=stsb")
    first.setup()
    cached = list((tmp_path / "cache" / "data").glob("stsb-train-*"))
    assert len(cached) == 1
    second = module(make_cfg, tok, "data=stsb")
    second.setup()
    assert second.splits["train"]["input_ids"] == first.splits["train"]["input_ids"]
    assert second.splits["train"].cache_files[0]["filename"].startswith(str(cached[0]))


def write_task(root: Path, train: str, dev: str = "sentence\tlabel\nfine\t1\n") -> Path:
    (root / "SST-2").mkdir(parents=True)
    (root / "SST-2" / "train.tsv").write_text(train)
    (root / "SST-2" / "dev.tsv").write_text(dev)
    return root


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ("", "is empty"),
        ("sentence\tlabel\n", "no rows"),
        ("text\tlabel\ngood\t1\n", "no column"),
        ('sentence\tlabel\ngood "movie\tpositive\n', "not a number"),
        ("sentence\tlabel\ngood\t2\n", "not a class id"),
    ],
)
def test_bad_tsv_files(make_cfg, tok, tmp_path, train, message):
    root = write_task(tmp_path / "glue", train)
    dm = module(make_cfg, tok, "data=sst2", f"data.root={root}")
    with pytest.raises(ConfigError, match=message):
        dm.setup()


def test_stsb_score_out_of_range(make_cfg, tok, tmp_path):
    root = tmp_path / "glue"
    (root / "STS-B").mkdir(parents=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    (root / "STS-B" / "train.tsv").write_text(header + "0\tg\tf\t2012\t1\ts\ts\tA cat.\tA dog.\t5.5\n")
    (root / "STS-B" / "dev.tsv").write_text(header + "0\tg\tf\t2012\t1\ts\ts\tA cat.\tA dog.\t2\n")
    dm = module(make_cfg, tok, "data=stsb", f"data.root={root}")
    with pytest.raises(ConfigError, match=r"outside \[0.0, 5.0\]"):
        dm.setup()


def test_missing_folder_says_where_and_how(make_cfg, tok, tmp_path):
    dm = module(make_cfg, tok, "data=stsb", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="GLUE_DIR") as err:
        dm.setup()
    assert "data.root=" in str(err.value) and "nowhere" in str(err.value)
