"""DCFormer CLIP: Med3DVLM's ``DEC_CLIP`` / DCFormer's CT-CLIP towers over our DCFormer encoder.

Facts matched (mirthAI/Med3DVLM ``DEC_CLIP``):
- keys ``vision_encoder`` (a ``DecompModel``, so ``vision_encoder.encoder.s0...``),
  ``language_encoder``, ``mm_vision_proj``, ``mm_language_proj``, and ``t_prime``/``bias``
  (sigmoid loss) or ``logit_scale`` (softmax loss); defaults hidden 512, t' = log(1/0.07),
  b = 0, input 128x256x256 (D x H x W; the official config writes it (256, 256, 128));
- image: the last stage's tokens, mean over tokens, linear, L2 norm;
- text: ``last_hidden_state`` of the language encoder, first token, linear, L2 norm;
- sigmoid loss on the symmetrised logits (Med3DVLM), softmax loss = mean of the two
  cross-entropies with ``logit_scale`` used as is; under ``torch.distributed`` the features are
  all-gathered with gradients and the loss runs over the global batch.

Zero-shot multi-abnormality classification as CT-CLIP does it (mirthAI/DCFormer
``engine_pretrain.evaluate``): per pathology the prompts "X is present." / "X is not present.",
the two image-text similarities times a temperature (CT-CLIP: e), softmax over the pair.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dcformer import dcformer

# The 18 CT-RATE abnormalities, in the order of its label files and of DCFormer's zero-shot code.
CT_RATE_PATHOLOGIES = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)


def zero_shot_prompts(pathology: str):
    """CT-CLIP's prompt pair: (positive, negative)."""
    return f"{pathology} is present.", f"{pathology} is not present."


class ByteTokenizer:
    """A download-free tokenizer for :class:`TextTransformer`: UTF-8 bytes + 3, with [CLS]=1
    first, [EOS]=2 last, [PAD]=0. Called like a Hugging Face tokenizer on a list of texts."""

    vocab_size = 259
    pad_id, cls_id, eos_id = 0, 1, 2

    def __init__(self, max_length: int = 128) -> None:
        self.max_length = max_length

    def __call__(self, texts, return_tensors: str = "pt", **_ignored) -> Dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        seqs = [[self.cls_id] + [b + 3 for b in t.encode("utf-8")][: self.max_length - 2] + [self.eos_id]
                for t in texts]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class TextTransformer(nn.Module):
    """A small pre-norm transformer text encoder: token ids (B, L) -> ``last_hidden_state``
    (B, L, dim). Stands in for a Hugging Face model so everything runs without downloads."""

    def __init__(self, vocab_size: int = ByteTokenizer.vocab_size, dim: int = 256, depth: int = 4, heads: int = 4,
                 max_len: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = SimpleNamespace(dim=dim, hidden_size=dim, vocab_size=vocab_size)
        self.token_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.pos_emb.num_embeddings:
            raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, at most {self.pos_emb.num_embeddings}")
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.token_emb(input_ids) + self.pos_emb(pos)
        pad = None if attention_mask is None else attention_mask == 0
        h = self.norm(self.layers(h, src_key_padding_mask=pad))
        return {"last_hidden_state": h}


def _hidden(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out["last_hidden_state"]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


def _text_width(encoder: nn.Module) -> int:
    cfg = getattr(encoder, "config", None)
    for name in ("dim", "hidden_size", "d_model"):
        if cfg is not None and isinstance(getattr(cfg, name, None), int):
            return getattr(cfg, name)
    raise ValueError("cannot read the text encoder's width from .config.dim / .config.hidden_size; pass text_dim=")


def _gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather with gradients when torch.distributed is initialised with several ranks."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    import torch.distributed.nn

    return torch.cat(torch.distributed.nn.all_gather(x), dim=0)


def siglip_loss(img: torch.Tensor, txt: torch.Tensor, t_prime: torch.Tensor, bias: torch.Tensor,
                backend: str = "auto") -> torch.Tensor:
    """Med3DVLM's sigmoid loss (symmetrised logits, exp(t'), / N) through our fused
    ``medkernels.ops.sigmoid_loss`` (variant "med3dvlm"); the plain formula when that op is not
    built into this checkout."""
    try:
        from ..ops.sigmoid_loss import sigmoid_loss
    except ImportError:  # the sigmoid-loss family is not in this checkout
        from ..reference.models import med3dvlm_sigmoid_loss_ref

        return med3dvlm_sigmoid_loss_ref(img, txt, t_prime, bias)
    return sigmoid_loss(img, txt, t_prime, bias, variant="med3dvlm", backend=backend)


def clip_softmax_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The softmax CLIP loss as DEC_CLIP computes it (``logit_scale`` multiplies as is)."""
    logits = logit_scale * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class DCFormerCLIP(nn.Module):
    """DCFormer image tower + text tower, contrastive loss (Med3DVLM ``DEC_CLIP`` keys).

    Args:
        vision: DCFormer variant ("nano" .. "base"; Med3DVLM: "small").
        text_encoder: any module mapping (input_ids, attention_mask=) to a hidden state (a tensor,
            a dict/object with ``last_hidden_state``, or a tuple whose first item is it), e.g. a
            Hugging Face ``AutoModel``; default a small :class:`TextTransformer`.
        text_dim: the text encoder's width (default: read from its ``config``).
        hidden_size: the shared embedding width (512).
        loss_type: "sigmoid" (Med3DVLM; params ``t_prime``, ``bias``) or "nce" (softmax;
            param ``logit_scale``).
        backend: kernel backend of the encoder's DecompConv3d layers.
        loss_backend: backend of the sigmoid loss op.
    """

    def __init__(self, vision: str = "small", text_encoder: Optional[nn.Module] = None,
                 text_dim: Optional[int] = None, hidden_size: int = 512, loss_type: str = "sigmoid",
                 t_prime: float = math.log(1 / 0.07), bias: float = 0.0, backend: str = "auto",
                 loss_backend: str = "auto", input_size=(128, 256, 256)) -> None:
        super().__init__()
        if loss_type not in ("sigmoid", "nce"):
            raise ValueError(f"loss_type must be 'sigmoid' or 'nce', got {loss_type!r}")
        self.input_size = tuple(input_size)
        self.loss_backend = loss_backend
        self.vision_encoder = dcformer(vision, backend=backend)
        self.language_encoder = text_encoder if text_encoder is not None else TextTransformer()
        width = text_dim if text_dim is not None else _text_width(self.language_encoder)
        self.mm_vision_proj = nn.Linear(self.vision_encoder.channels[-1], hidden_size)
        self.mm_language_proj = nn.Linear(width, hidden_size)
        self.loss_type = loss_type
        if loss_type == "sigmoid":
            self.t_prime = nn.Parameter(torch.tensor(float(t_prime)))
            self.bias = nn.Parameter(torch.tensor(float(bias)))
        else:
            self.logit_scale = nn.Parameter(torch.tensor(float(t_prime)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, hidden) unit vectors."""
        last = self.vision_encoder.forward_features(images)
        feats = last.mean(dim=(2, 3, 4))  # = the mean over the last stage's tokens
        return F.normalize(self.mm_vision_proj(feats), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, L) token ids -> (B, hidden) unit vectors (first token)."""
        h = _hidden(self.language_encoder(input_ids, attention_mask=attention_mask))
        return F.normalize(self.mm_language_proj(h[:, 0]), dim=-1)

    def logit_scale_value(self) -> torch.Tensor:
        return self.t_prime.exp() if self.loss_type == "sigmoid" else self.logit_scale

    def loss(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        img, txt = _gather(image_features), _gather(text_features)
        if self.loss_type == "sigmoid":
            return siglip_loss(img, txt, self.t_prime, self.bias, backend=self.loss_backend)
        return clip_softmax_loss(img, txt, self.logit_scale)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                **_ignored) -> Dict[str, torch.Tensor]:
        img = self.encode_image(images)
        txt = self.encode_text(input_ids, attention_mask)
        return {"loss": self.loss(img, txt), "image_features": img, "text_features": txt}

    @torch.no_grad()
    def zero_shot(self, images: torch.Tensor, tokenizer: Callable, pathologies: Sequence[str] = CT_RATE_PATHOLOGIES,
                  temperature: float = math.e) -> torch.Tensor:
        """(B, P) probability that each pathology is present (CT-CLIP's prompt-pair softmax)."""
        return zero_shot_probabilities(self, images, tokenizer, pathologies, temperature)


def zero_shot_probabilities(model, images: torch.Tensor, tokenizer: Callable,
                            pathologies: Sequence[str] = CT_RATE_PATHOLOGIES, temperature: float = math.e,
                            image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, P): softmax over [present, not present] of temperature * cos(image, prompt), the
    "present" entry, per pathology. ``model`` has ``encode_image``/``encode_text``; ``tokenizer``
    maps a list of texts to a dict with ``input_ids`` (and ``attention_mask``)."""
    img = model.encode_image(images) if image_features is None else image_features
    texts = [p for name in pathologies for p in zero_shot_prompts(name)]
    tok = tokenizer(texts, return_tensors="pt", padding=True)
    dev = img.device
    txt = model.encode_text(tok["input_ids"].to(dev), tok.get("attention_mask", None) if isinstance(tok, dict)
                            else None)
    sims = temperature * (img @ txt.T).reshape(img.shape[0], len(pathologies), 2)
    return sims.softmax(dim=-1)[..., 0]


def pathology_table(probabilities: torch.Tensor, pathologies: Sequence[str] = CT_RATE_PATHOLOGIES) -> str:
    """A plain-text table: one row per pathology, one column per volume."""
    width = max(len(p) for p in pathologies)
    rows = [f"{'pathology':<{width}}  " + "  ".join(f"vol{i:<3d}" for i in range(probabilities.shape[0]))]
    for j, name in enumerate(pathologies):
        rows.append(f"{name:<{width}}  " + "  ".join(f"{float(p):.3f} " for p in probabilities[:, j]))
    return "\n".join(rows)
