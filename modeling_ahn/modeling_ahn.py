# Copyright 2026 The modeling_ahn authors. Apache-2.0.
"""``AhnForCausalLM``: a frozen decoder-only base augmented with AHN memories (Hub remote-code payload).

The model *is* the base model plus AHN: it registers the base's decoder as ``model`` and its head as
``lm_head``, so its state dict is the base's own keys plus the official AHN keys
``model.layers.{i}.ahn.fn.<param>``; forward calls the base's own ``forward``.
"""

from __future__ import annotations

import copy
import os

import torch
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .attention_ahn import AHN_ATTENTION, INNER_IMPLEMENTATIONS, attach_ahn
from .cache_ahn import AhnCache
from .configuration_ahn import SUPPORTED_BASE_MODEL_TYPES, AhnConfig
from .memory_ahn import AhnMemory, AhnModule, build_memory


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _check_base(base) -> None:
    model_type = getattr(base.config, "model_type", None)
    if model_type not in SUPPORTED_BASE_MODEL_TYPES:
        raise ValueError(
            f"Unsupported base architecture {model_type!r} ({type(base).__name__}): AHN supports "
            f"{', '.join(SUPPORTED_BASE_MODEL_TYPES)} causal LMs."
        )
    decoder = getattr(base, base.base_model_prefix, None)
    if decoder is None or not hasattr(decoder, "layers") or base.get_output_embeddings() is None:
        raise ValueError(
            f"{type(base).__name__} is not a causal LM with a decoder and an LM head; load the base with "
            "AutoModelForCausalLM."
        )


class AhnPreTrainedModel(PreTrainedModel):
    config_class = AhnConfig
    config: AhnConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["past_key_values"]

    def _init_weights(self, module):
        # Only AHN modules are ever initialised here; the frozen base keeps its weights.
        if isinstance(module, AhnMemory):
            module.reset_parameters()


class AhnForCausalLM(AhnPreTrainedModel, GenerationMixin):
    """A frozen causal LM with sinks + sliding-window attention and an AHN memory per layer.

    Build a fresh adapter with :meth:`from_base`; load AHN weights with :meth:`load_ahn_state_dict`.
    """

    def __init__(self, config: AhnConfig, base_model: PreTrainedModel | None = None):
        super().__init__(config)
        if base_model is None:
            if config.base_config is None:
                raise ValueError("AhnConfig has no base_config: build it with AhnConfig(base_config=...) or from_base().")
            base_model = AutoModelForCausalLM.from_config(config.base_config)
        _check_base(base_model)
        config.base_config = base_model.config
        config.validate_ahn()
        base_model.requires_grad_(False)
        self.model = getattr(base_model, base_model.base_model_prefix)
        self.lm_head = base_model.get_output_embeddings()
        self.__dict__["_base"] = base_model  # called for forward; its modules are ours (same objects)
        self.vocab_size = base_model.config.vocab_size

        bc = base_model.config
        inner = bc._attn_implementation if bc._attn_implementation in INNER_IMPLEMENTATIONS else "sdpa"
        memories = {}
        for i in config.ahn_layers:
            ref = self.model.layers[i].self_attn.q_proj.weight
            mem = build_memory(config.ahn_type, bc.hidden_size, bc.num_attention_heads, _head_dim(bc))
            memories[i] = AhnModule(mem).to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        attach_ahn(self.model, config, memories, inner=inner)
        base_model.set_attn_implementation(AHN_ATTENTION)
        self.post_init()
        self.generation_config = copy.deepcopy(base_model.generation_config)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_base(
        cls,
        base_model_or_path,
        ahn_type: str = "gdn",
        sliding_window: int | None = None,
        num_sinks: int | None = None,
        full_attention_layers=None,
        prefill_chunk_size: int | None = -1,
        ahn_dtype: torch.dtype | None = None,
        **from_pretrained_kwargs,
    ) -> AhnForCausalLM:
        """A fresh AHN (``o_proj`` zero, so it equals sinks + sliding-window attention) over a frozen base.

        ``base_model_or_path``: a loaded causal LM (augmented in place) or a path/repo id loaded with
        ``AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)``. The AHN takes the base's
        dtype and device unless ``ahn_dtype`` is given.
        """
        if isinstance(base_model_or_path, (str, os.PathLike)):
            path = str(base_model_or_path)
            base = AutoModelForCausalLM.from_pretrained(path, **from_pretrained_kwargs)
        else:
            if from_pretrained_kwargs:
                raise ValueError(f"from_pretrained kwargs {sorted(from_pretrained_kwargs)} need a path, not a model.")
            base = base_model_or_path
            path = getattr(base.config, "_name_or_path", None) or None
        _check_base(base)
        kwargs = dict(ahn_type=ahn_type, full_attention_layers=full_attention_layers)
        if sliding_window is not None:
            kwargs["sliding_window"] = sliding_window
        if num_sinks is not None:
            kwargs["num_sinks"] = num_sinks
        if prefill_chunk_size != -1:
            kwargs["prefill_chunk_size"] = prefill_chunk_size
        config = AhnConfig(base_config=base.config, base_model_name_or_path=path, **kwargs)
        model = cls(config, base_model=base)
        if ahn_dtype is not None:
            for module in model.ahn_modules().values():
                module.to(dtype=ahn_dtype)
        return model.eval()

    @property
    def base_causal_lm(self) -> PreTrainedModel:
        """The augmented base causal LM (its modules are this model's ``model`` and ``lm_head``)."""
        return self.__dict__["_base"]

    def get_input_embeddings(self):
        return self.base_causal_lm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.base_causal_lm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def get_decoder(self):
        return self.model

    # ------------------------------------------------------------------ AHN weights

    def ahn_modules(self) -> dict[int, AhnModule]:
        return {i: layer.ahn for i, layer in enumerate(self.model.layers) if "ahn" in layer._modules}

    def ahn_parameters(self):
        for module in self.ahn_modules().values():
            yield from module.parameters()

    def num_ahn_parameters(self) -> int:
        return sum(p.numel() for p in self.ahn_parameters())

    def ahn_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the AHN tensors, under the official keys ``model.layers.{i}.ahn.fn.<param>``."""
        return {
            f"model.layers.{i}.ahn.{name}": t
            for i, module in self.ahn_modules().items()
            for name, t in module.state_dict().items()
        }

    @torch.no_grad()
    def load_ahn_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True):
        """Load AHN tensors keyed ``model.layers.{i}.ahn.fn.<param>`` (values cast to each parameter's dtype).

        Raises ``ValueError`` when shapes do not fit this base, or (``strict``) on missing/unexpected keys.
        Returns ``(missing, unexpected)``.
        """
        own = self.ahn_state_dict()
        unexpected = sorted(k for k in state_dict if k not in own)
        missing = sorted(k for k in own if k not in state_dict)
        bad = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in own.items()
               if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
        if bad:
            k, got, want = bad[0]
            bc = self.config.base_config
            raise ValueError(
                f"AHN weights do not fit this base: {k} has shape {got}, expected {want} for a base with hidden size "
                f"{bc.hidden_size}, {bc.num_attention_heads} heads of size {_head_dim(bc)} ({len(bad)} mismatched "
                "tensors). Load the adapter on the base model it was trained for."
            )
        if strict and (missing or unexpected):
            raise ValueError(
                f"AHN state dict does not match this model (ahn_type={self.config.ahn_type!r}, AHN layers "
                f"{self.config.ahn_layers}): missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected "
                f"{unexpected[:4]}{'...' if len(unexpected) > 4 else ''}. Check ahn_type and full_attention_layers."
            )
        for k, v in state_dict.items():
            if k in own:
                own[k].copy_(v.to(device=own[k].device, dtype=own[k].dtype))
        return missing, unexpected

    # ------------------------------------------------------------------ cache / forward

    def new_cache(self) -> AhnCache:
        return AhnCache(self.config)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if model_kwargs.get("past_key_values") is None and generation_config.use_cache is not False:
            if generation_config.cache_implementation not in (None, "dynamic"):
                raise ValueError(
                    f"cache_implementation={generation_config.cache_implementation!r} is not supported by AHN models; "
                    "leave it unset (an AhnCache is used)."
                )
            model_kwargs["past_key_values"] = self.new_cache()
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def _resolve_cache(self, past_key_values):
        if past_key_values is None:
            return self.new_cache()
        if isinstance(past_key_values, AhnCache):
            return past_key_values
        if type(past_key_values) is DynamicCache and past_key_values.get_seq_length() == 0:
            return self.new_cache()
        if isinstance(past_key_values, Cache):
            return past_key_values  # upgraded per layer by the pre-hook, or a clear error there
        raise ValueError(f"past_key_values must be an AhnCache, got {type(past_key_values).__name__}.")

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        self.config.validate_ahn()  # settings may have been changed on the live config
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache:
            past_key_values = self._resolve_cache(past_key_values)
        seq = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        past = past_key_values.get_seq_length() if isinstance(past_key_values, Cache) else 0
        if attention_mask is not None and attention_mask.dim() == 2:
            if attention_mask.shape[1] not in (seq + past,) and not (past == 0 and attention_mask.shape[1] == seq):
                raise ValueError(
                    f"attention_mask has {attention_mask.shape[1]} columns; expected {seq + past} "
                    f"(the {past} tokens already in the cache + {seq} new ones)."
                )
            if position_ids is None and not bool(attention_mask.all()):
                # positions that skip the padding, as generate() computes them
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
        chunk = self.config.prefill_chunk_size
        if isinstance(past_key_values, Cache) and chunk and seq > chunk:
            return self._chunked_forward(input_ids, inputs_embeds, attention_mask, position_ids, past_key_values,
                                         labels, logits_to_keep, chunk, past, **kwargs)
        return self.base_causal_lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _chunked_forward(self, input_ids, inputs_embeds, attention_mask, position_ids, cache, labels,
                         logits_to_keep, chunk, past, **kwargs):
        """Prefill in chunks: the cache never holds more than sinks + window, whatever the prompt length.

        Only the logits asked for are computed (``logits_to_keep`` last positions; all when 0 or with labels).
        """
        x = input_ids if input_ids is not None else inputs_embeds
        n = x.shape[1]
        keep_all = labels is not None or not isinstance(logits_to_keep, int) or logits_to_keep == 0
        logits = []
        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            part = dict(
                attention_mask=None if attention_mask is None else attention_mask[:, : past + end],
                position_ids=None if position_ids is None else position_ids[:, start:end],
                past_key_values=cache,
                use_cache=True,
            )
            part["input_ids" if input_ids is not None else "inputs_embeds"] = x[:, start:end]
            need = end - start if keep_all else max(0, min(end - start, logits_to_keep - (n - end)))
            if need == 0:
                self.model(**part, **kwargs)
                continue
            out = self.base_causal_lm(**part, logits_to_keep=0 if need == end - start else need, **kwargs)
            logits.append(out.logits)
        logits = torch.cat(logits, dim=1)
        if not isinstance(logits_to_keep, int):
            logits = logits[:, logits_to_keep]
        loss = None
        if labels is not None:
            loss = self.base_causal_lm.loss_function(logits=logits, labels=labels, vocab_size=self.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)


__all__ = ["AhnForCausalLM", "AhnPreTrainedModel"]
