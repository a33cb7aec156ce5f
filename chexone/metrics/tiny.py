"""Tiny random stand-ins for the metric models, built locally in seconds (tests, demos, offline smoke runs).

They exercise the real loading and scoring code paths of every model-backed metric without any download:

* :func:`build_tiny_bert` — a 2-layer BERT (WordPiece vocabulary of given words) saved as a Hugging Face directory;
  also the backbone of the tiny CheXbert and RadGraph models.
* :func:`build_tiny_roberta` — a small RoBERTa with a byte-level BPE trained on a few sentences (for BERTScore,
  whose ReXRank model is ``distilroberta-base``).
* :func:`build_tiny_chexbert` — a ``chexbert.pth``-format checkpoint (``{"model_state_dict": {"module.bert...":
  ..., "module.linear_heads...": ...}}``) on a tiny BERT.
* :func:`build_tiny_radgraph` — a DyGIE archive directory (``config.json``, ``vocabulary/``, ``weights.th``, and
  optionally ``.tar.gz``) for the ``radgraph`` package, with random weights; its ``config.json`` names the backbone by
  a fake hub id, to be mapped to the tiny BERT directory.

Scores from random models are meaningless; the point is that the code paths, shapes, caching and file formats are
the real ones.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "RADGRAPH_ENTITY_LABELS",
    "RADGRAPH_RELATION_LABELS",
    "TINY_WORDS",
    "build_tiny_bert",
    "build_tiny_chexbert",
    "build_tiny_radgraph",
    "build_tiny_roberta",
]

#: Words of the tiny WordPiece vocabulary ('a', 'b', '1', '2' are needed by radgraph's tokenizer probing).
TINY_WORDS = ["a", "b", "1", "2", "3", "no", "the", "is", "are", "of", "and", "or", "with", "in", "there", "normal", "heart", "size", "lungs", "clear", "mild", "moderate", "severe", "small", "large", "left", "right", "bilateral", "pleural", "effusion", "effusions", "pneumothorax", "cardiomegaly", "opacity", "opacities", "edema", "consolidation", "atelectasis", "basilar", "lower", "upper", "lobe", "lung", "tube", "line", "stable", "unchanged", "new", "acute", "findings", "evidence", "silhouette", "mediastinal", "contour", "contours", "within", "limits", "focal", "seen", "not", ".", ",", ":", "-", "/", "(", ")"]

TINY_SENTENCES = (
    "the heart size is normal .",
    "no pleural effusion or pneumothorax .",
    "mild cardiomegaly with bilateral pleural effusions .",
    "the lungs are clear .",
    "left lower lobe opacity is seen .",
    "moderate pulmonary edema is unchanged .",
    "there is no focal consolidation .",
    "stable mediastinal contours .",
)

#: RadGraph v1 labels (original RadGraph, as RadCliQ uses it).
RADGRAPH_ENTITY_LABELS = ("ANAT-DP", "OBS-DP", "OBS-DA", "OBS-U")
RADGRAPH_RELATION_LABELS = ("modify", "located_at", "suggestive_of")


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def build_tiny_bert(path: str | os.PathLike, *, words: Sequence[str] = TINY_WORDS, seed: int = 0, hidden: int = 32,
                    layers: int = 2, heads: int = 2, max_positions: int = 128, save_model: bool = True) -> Path:
    """A tiny uncased BERT directory (config, weights, WordPiece tokenizer with ``model_max_length``)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    from chexone.model.transformers_compat import save_local_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for w in words:
        if w not in vocab:
            vocab.append(w)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(vocab=str(path / "vocab.txt"), do_lower_case=True, model_max_length=max_positions)
    tok.save_pretrained(path)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden + 5, max_position_embeddings=max_positions, pad_token_id=0)
    cfg.save_pretrained(path)
    if save_model:
        _seed(seed)
        save_local_model(BertModel(cfg), path)
    return path


def build_tiny_roberta(path: str | os.PathLike, *, sentences: Sequence[str] = TINY_SENTENCES, seed: int = 0,
                       hidden: int = 32, layers: int = 3, heads: int = 2, vocab_size: int = 400,
                       max_positions: int = 128) -> Path:
    """A tiny RoBERTa directory with a byte-level BPE trained on ``sentences`` (``model_max_length`` set)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    from chexone.model.transformers_compat import save_local_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(list(sentences) * 4, vocab_size=vocab_size, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    vocab = bpe.get_vocab()
    model_json = json.loads(bpe._tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tok = RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=max_positions - 2)
    tok.save_pretrained(path)
    cfg = RobertaConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden + 5, max_position_embeddings=max_positions, pad_token_id=1,
                        bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    _seed(seed)
    save_local_model(RobertaModel(cfg), path)
    return path


def build_tiny_chexbert(path: str | os.PathLike, bert_dir: str | os.PathLike, *, seed: int = 0,
                        legacy_position_ids: bool = True) -> Path:
    """A ``chexbert.pth``-format checkpoint of a random CheXbert on the tiny BERT in ``bert_dir``.

    ``legacy_position_ids`` adds the ``module.bert.embeddings.position_ids`` buffer that checkpoints written with old
    transformers versions carry (the real file does).
    """
    import torch

    from chexone.metrics.semb import CheXbertEncoder

    _seed(seed)
    from transformers import BertConfig

    model = CheXbertEncoder(BertConfig.from_pretrained(bert_dir))
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    if legacy_position_ids:
        n = model.bert.config.max_position_embeddings
        state["module.bert.embeddings.position_ids"] = torch.arange(n).unsqueeze(0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "model_state_dict": state}, path)
    return path


def build_tiny_radgraph(path: str | os.PathLike, backbone_dir: str | os.PathLike, *, model_type: str = "radgraph",
                        backbone_hub_id: str = "chexone-tiny/bert", seed: int = 0, max_span_width: int = 3,
                        ner_bias: float = 0.0, relation_bias: float = 0.0, legacy_position_ids: bool = False,
                        archive: bool = False) -> Path:
    """A random DyGIE model directory ``path/<model_type>/`` in the layout of radgraph's archives.

    ``config.json`` names the backbone ``backbone_hub_id`` (a fake hub id: map it to ``backbone_dir`` with
    ``radgraph_compat.register_backbone`` or the ``backbone_path`` setting). ``ner_bias``/``relation_bias`` shift the
    final scorers' biases (positive values make more spans entities / more pairs related). With ``archive`` a
    ``path/<model_type>.tar.gz`` holding the same files is written too. Returns the model directory.
    """
    import torch

    from chexone.metrics import radgraph_compat

    radgraph_compat.register_backbone(backbone_hub_id, backbone_dir)
    radgraph_compat.install()
    from radgraph.allennlp.data import Vocabulary
    from radgraph.allennlp.modules import text_field_embedders, token_embedders
    from radgraph.dygie.models import dygie

    if model_type == "radgraph":
        ent_labels, rel_labels = RADGRAPH_ENTITY_LABELS, RADGRAPH_RELATION_LABELS
    else:  # radgraph-xl style labels
        ent_labels = ("Anatomy::definitely present", "Observation::definitely present",
                      "Observation::definitely absent", "Observation::uncertain")
        rel_labels = RADGRAPH_RELATION_LABELS
    bert = {"type": "pretrained_transformer_mismatched", "model_name": backbone_hub_id, "max_length": 512}
    config = {
        "dataset_reader": {"type": "dygie", "token_indexers": {"bert": dict(bert)}, "max_span_width": max_span_width},
        "model": {
            "type": "dygie",
            "embedder": {"token_embedders": {"bert": dict(bert)}},
            "initializer": {"regexes": []},
            "module_initializer": {"regexes": []},
            "feature_size": 8,
            "max_span_width": max_span_width,
            "target_task": "relation",
            "feedforward_params": {"num_layers": 1, "hidden_dims": 16, "dropout": 0.0},
            "loss_weights": {"ner": 1.0, "relation": 1.0, "coref": 0.0, "events": 0.0},
            "modules": {
                "ner": {},
                "relation": {"spans_per_word": 0.5},
                "coref": {"spans_per_word": 0.3, "max_antecedents": 10},
                "events": {"trigger_spans_per_word": 0.3, "argument_spans_per_word": 0.8,
                           "loss_weights": {"trigger": 1.0, "arguments": 0.5}},
            },
        },
    }
    vocab = Vocabulary(non_padded_namespaces=["*labels", "*tags"])
    vocab.add_token_to_namespace("", f"{model_type}__ner_labels")
    for lab in ent_labels:
        vocab.add_token_to_namespace(lab, f"{model_type}__ner_labels")
    for lab in rel_labels:
        vocab.add_token_to_namespace(lab, f"{model_type}__relation_labels")

    _seed(seed)
    embedder = text_field_embedders.BasicTextFieldEmbedder(
        {"bert": token_embedders.PretrainedTransformerMismatchedEmbedder(model_name=backbone_hub_id, max_length=512)})
    kwargs = dict(config["model"])
    for k in ("type", "embedder", "initializer", "module_initializer"):
        kwargs.pop(k)
    model = dygie.DyGIE(vocab=vocab, embedder=embedder, **json.loads(json.dumps(kwargs)))
    with torch.no_grad():
        for scorer in model._ner._ner_scorers.values():
            scorer[-1]._module.bias.add_(ner_bias)
        for scorer in model._relation._relation_scorers.values():
            scorer.bias.add_(relation_bias)
    state = model.state_dict()
    if legacy_position_ids:
        key = "_embedder.token_embedder_bert.transformer_model.embeddings.position_ids"
        state[key] = torch.arange(512).unsqueeze(0)

    out = Path(path) / model_type
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    vocab.save_to_files(str(out / "vocabulary"))
    torch.save(state, out / "weights.th")
    if archive:
        with tarfile.open(Path(path) / f"{model_type}.tar.gz", "w:gz") as tar:
            for name in ("config.json", "vocabulary", "weights.th"):
                tar.add(out / name, arcname=name)
    return out
