"""`from_vista_backbone` drops the text encoder's pooler on purpose, so loading says nothing about it — but still
reports any other weight that is missing or unexpected."""

import logging

import pytest
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

from modeling_gcl import GCLModel

TINY_EVA = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64)


@pytest.fixture
def bert_dir(tmp_path):
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path)  # with its pooler, as sentence-transformers' BERTs are saved
    return tmp_path


def test_the_pooler_left_out_on_purpose_is_not_reported(bert_dir, capfd, caplog):
    with caplog.at_level(logging.INFO):
        model = GCLModel.from_vista_backbone(str(bert_dir), vision_config=TINY_EVA, cls_token_id=1, sep_token_id=2)
    assert model.encoder.text_model.pooler is None
    captured = capfd.readouterr()
    assert "pooler" not in captured.err + captured.out + caplog.text
    assert "LOAD REPORT" not in captured.err + captured.out + caplog.text


def test_other_unexpected_weights_are_still_reported(bert_dir, caplog):
    weights = load_file(bert_dir / "model.safetensors")
    weights["encoder.stray.weight"] = weights["pooler.dense.weight"].clone()
    save_file(weights, bert_dir / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING):
        GCLModel.from_vista_backbone(str(bert_dir), vision_config=TINY_EVA, cls_token_id=1, sep_token_id=2)
    assert "encoder.stray.weight" in caplog.text and "pooler" not in caplog.text
