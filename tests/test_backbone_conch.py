"""The conch family: CONCH's tokenizer rules, its text and image embeddings and its checkpoint layout,
on a tiny variant whose checkpoint and tokenizer file the test writes.

References, independent of medtune's code: the tokenizer through transformers' PreTrainedTokenizerFast
with CONCH's ``tokenize`` re-typed (conch/open_clip_custom/custom_tokenizer.py); the text tower's class
mask re-typed from CONCH's ``TextTransformer.build_cls_mask`` (which masks only the class token's row,
where open_clip masks every row); the image embedding from CONCH's ``VisualModel.forward``.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from medtune.backbones import conch
from medtune.models import BackboneError, load_backbone

pytestmark = pytest.mark.usefixtures("no_network")

SPECIALS = ["<pad>", "<start_of_text>", "<end_of_text>", "<|person|>", "<|mrn|>", "<|specimen_id|>", "<|date|>"]
CORPUS = [
    "an H&E image of tumor epithelium", "lymphocytes in a lymph node", "normal colonic mucosa", "smooth muscle",
    "adipose tissue", "Débris and necrosis", "a histopathology image of stroma", "invasive ductal carcinoma",
] * 20
TINY = {
    "embed_dim": 16, "embed_dim_caption": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "num_heads": 2, "mlp_ratio": 4,
                   "attn_pooler_heads": 2, "n_queries_contrast": 1, "n_queries_caption": 4},
    "text_cfg": {"context_length": 16, "vocab_size": 400, "width": 32, "heads": 2, "layers": 2},
}
TEXTS = ["An H&E image of TUMOR epithelium.", "débris", "lymphocytes " * 30, ""]


def write_tokenizer(path):
    """A byte-level BPE file built as CONCH's is (normaliser, pre-tokeniser, template, special tokens), on a tiny vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>", special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)])
    tok.save(str(path))
    return path


def conch_tokenize(path, texts, context_length):
    """CONCH's get_tokenizer() and tokenize(), re-typed, at the tiny context length (transformers 5 has
    no batch_encode_plus; calling the tokenizer is the same encoding)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<start_of_text>", eos_token="<end_of_text>", pad_token="<pad>")
    tokens = tokenizer(texts, max_length=context_length - 1, add_special_tokens=True, return_token_type_ids=False,
                                         truncation=True, padding="max_length", return_tensors="pt")
    return F.pad(tokens["input_ids"], (0, 1), value=tokenizer.pad_token_id)


def conch_text_reference(model, text):
    """CONCH's CoCa._encode_text and TextTransformer.forward, re-typed (its blocks are plain pre-LN blocks)."""
    tower = model.text
    text = text[:, :-1]
    x = torch.cat([tower.token_embedding(text), tower.cls_emb.reshape(1, 1, -1).repeat(text.shape[0], 1, 1)], dim=1)
    seq_len = x.shape[1]
    cls_mask = (text != 0).unsqueeze(1)
    cls_mask = F.pad(cls_mask, (1, 0, cls_mask.shape[2], 0), value=True)
    additive = torch.zeros(cls_mask.shape).masked_fill_(~cls_mask, float("-inf")).repeat_interleave(tower.heads, 0)
    causal = torch.full((seq_len, seq_len), float("-inf")).triu_(1)
    x = x + tower.positional_embedding[:seq_len]
    for block in tower.transformer.resblocks:
        x = block(x, attn_mask=causal[None] + additive)
    pooled = tower.ln_final(x[:, -1]) @ tower.text_projection
    return F.normalize(pooled, dim=-1)


def conch_image_reference(model, images):
    """CONCH's VisualModel.forward (attentional pooling, one query) and CoCa._encode_image."""
    visual = model.visual
    tokens = visual.trunk.forward_features(images)
    pool = visual.attn_pool_contrast
    kv = pool.ln_k(tokens).permute(1, 0, 2)
    q = pool.ln_q(pool.query).unsqueeze(1).repeat(1, tokens.shape[0], 1)
    out = F.multi_head_attention_forward(
        q, kv, kv, pool.attn.embed_dim, pool.attn.num_heads, None, pool.attn.in_proj_bias, None, None, False, 0.0,
        pool.attn.out_proj.weight, pool.attn.out_proj.bias, training=False, need_weights=False, use_separate_proj_weight=True,
        q_proj_weight=pool.attn.q_proj_weight, k_proj_weight=pool.attn.k_proj_weight, v_proj_weight=pool.attn.v_proj_weight)[0]
    pooled = visual.ln_contrast(out.permute(1, 0, 2)[:, 0]) @ visual.proj_contrast
    return F.normalize(pooled, dim=-1)


@pytest.fixture
def released(tmp_path):
    """A tiny CONCH release as a user places it: pytorch_model.bin (CONCH's checkpoint dict, no decoder)
    with the tokenizer file beside it, and the model the weights came from."""
    torch.manual_seed(7)
    model = conch.Conch(**TINY).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    folder = tmp_path / "conch"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    write_tokenizer(folder / "conch_byte_level_bpe_uncased.json")
    return folder, model


def user_spec(folder, **extra):
    return {"family": "conch", "checkpoint": str(folder / "pytorch_model.bin"), "kwargs": TINY, **extra}


def test_the_tokenizer_follows_conchs_rules(tmp_path):
    path = write_tokenizer(tmp_path / "tok.json")
    ours = conch.ConchTokenizer(path, context_length=16)(TEXTS)
    assert ours.shape == (4, 16) and ours.dtype == torch.long
    assert torch.equal(ours, conch_tokenize(path, TEXTS, 16))
    assert ours[0, 0] == 1 and (ours[:, -1] == 0).all() and ours[2, -2] == 2  # truncated, still ends with <end_of_text>
    assert torch.equal(ours[3, :3], torch.tensor([1, 2, 0]))


def test_a_tokenizer_file_of_another_vocabulary_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False))
    tok.save(str(tmp_path / "other.json"))
    with pytest.raises(BackboneError, match="not CONCH's tokenizer file"):
        conch.ConchTokenizer(tmp_path / "other.json", 16)


def test_the_released_checkpoint_loads_and_embeds_as_conch_does(released):
    folder, model = released
    backbone = load_backbone("conch", user_spec(folder))
    assert backbone.text_tower and backbone.image_size == 32 and backbone.mean == (0.48145466, 0.4578275, 0.40821073)
    tokens = backbone.tokenizer(TEXTS)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(backbone.model.encode_text(tokens), conch_text_reference(model, tokens))
        torch.testing.assert_close(backbone.model.encode_image(images), conch_image_reference(model, images))
        # THUNDER and TRIDENT probe the pooled vector before proj_contrast
        assert backbone.model.encode_image(images, proj_contrast=False, normalize=False).shape == (3, 16)
    assert backbone.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))


def test_a_training_checkpoint_with_the_decoder_loads_without_it(released, tmp_path):
    """CONCH's read_state_dict unwraps state_dict and strips module.; the decoder is not part of the model."""
    folder, model = released
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.text_decoder.ln_final.weight"] = torch.ones(32)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "train.pt")
    backbone = load_backbone("conch", user_spec(folder, checkpoint=str(tmp_path / "train.pt"), tokenizer=str(folder / "conch_byte_level_bpe_uncased.json")))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.model.encode_image(images), conch_image_reference(model, images))


def test_a_missing_key_or_tokenizer_is_one_line(released, tmp_path):
    folder, model = released
    state = model.state_dict()
    del state["visual.proj_contrast"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(BackboneError, match="1 missing \\(e.g. visual.proj_contrast\\)") as err:
        load_backbone("conch", user_spec(tmp_path, tokenizer=str(folder / "conch_byte_level_bpe_uncased.json")))
    assert "\n" not in str(err.value)
    (folder / "conch_byte_level_bpe_uncased.json").unlink()
    with pytest.raises(BackboneError, match="place it beside the checkpoint or set backbones.conch.tokenizer"):
        load_backbone("conch", user_spec(folder))


def test_zero_shot_logits_are_conchs(released):
    """CONCH's notebooks: image_embeddings @ text_embeddings.T * logit_scale.exp()."""
    from medtune.encode import prompt_ensemble

    folder, model = released
    backbone = load_backbone("conch", user_spec(folder))
    classifier = torch.from_numpy(prompt_ensemble(backbone, [["tumor"], ["stroma"]]))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        image = conch_image_reference(model, images)
        text = conch_text_reference(model, conch_tokenize(folder / "conch_byte_level_bpe_uncased.json", ["tumor", "stroma"], 16))
        torch.testing.assert_close(backbone.logit_scale * image @ classifier.T, image @ text.T * model.logit_scale.exp())
