"""``EngineUNet``: an exported UNet that a user's own diffusers pipeline runs in place of its ``unet``.

``pipe.unet = EngineUNet("engines/sd-w8a8")`` and the rest of the user's diffusers code stays as it
is: the pipeline still tokenizes, encodes, guides, steps its scheduler and decodes in torch; each
UNet call goes to the exported graph instead. Why a drop-in rather than only ``sample DIR``: people
already have diffusers code (schedulers, callbacks, image post-processing) and should not rewrite it
to try a quantized engine.

What diffusers' ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` read from their UNet is
provided: ``config`` (``in_channels``, ``sample_size``, ``time_cond_proj_dim``, ``addition_embed_type``,
``addition_time_embed_dim``, ...), ``dtype``, ``device``, and for SDXL ``add_embedding.linear_1.in_features``
(the size check of the ``text_time`` conditioning). The call takes ``UNet2DConditionModel.forward``'s
arguments and returns ``UNet2DConditionOutput`` (or a tuple with ``return_dict=False``). The
timestep of each call is mapped to its table row by value (``sampling.timestep_rows``); a timestep
the table lacks stops with one ``TfmqError`` line. Adapters the graph does not carry (ControlNet
residuals, LoRA scales, class labels, LCM's ``timestep_cond``) are refused, never ignored.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from tfmq_export import contract as c
from tfmq_export.backends.stages import STAGE_BACKENDS, StageRunner
from tfmq_export.errors import TfmqError
from tfmq_export.sampling import timestep_rows

__all__ = ["DEFAULT_ADDITION_TIME_EMBED_DIM", "EngineUNet"]

#: SDXL's ``addition_time_embed_dim``; used when no original ``config`` is given (only the product
#: with the number of time ids enters diffusers' size check, beside the pooled embedding's width)
DEFAULT_ADDITION_TIME_EMBED_DIM = 256

#: config keys the graph decides; a ``config=`` given by the user must agree with them
_GRAPH_KEYS = ("in_channels", "out_channels", "sample_size", "cross_attention_dim", "addition_embed_type")


def _graph_inputs(path: Path) -> dict[str, list[Any]]:
    """Input name -> shape (ints, or names for dynamic axes) of an ONNX graph, weights not loaded."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise TfmqError(f"{path} is not a readable ONNX file: {exc}") from exc
    return {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}


def _resolve(source: Path, backend: str) -> tuple[Path, Path, list[Any], tuple[int, ...], str]:
    """(unet graph, the file to run, table timesteps, latent shape [C, h, w], precision) of a pipeline
    folder or a UNet .onnx. In a folder, the file to run is the engine ``build-engine DIR --backend``
    built for ``backend`` when there is one, else the graph."""
    if source.is_dir():
        from tfmq_export.workflows.sample_pipeline import ExportedPipeline, is_pipeline_dir

        if not is_pipeline_dir(source):
            raise TfmqError(f"{source} is not a folder written by export-pipeline (no {c.PIPELINE_JSON}); "
                            "give it or its unet.onnx")
        pipe = ExportedPipeline.read(source)
        return (pipe.stage_path(c.STAGE_UNET), pipe.stage_path(c.STAGE_UNET, backend),
                list(pipe.described[c.PJ_TIMESTEPS]), pipe.latent_shape, pipe.described[c.PJ_PRECISION])
    if source.suffix != ".onnx":
        raise TfmqError(f"EngineUNet takes an export-pipeline folder or an exported unet .onnx, not {source}")
    from tfmq_export.export.onnx_export import describe_onnx

    info = describe_onnx(source)
    return source, source, list(info.timesteps), tuple(info.sample_shape), info.precision


class EngineUNet:
    """An exported (Q/DQ) UNet with the call signature, ``config`` and output of diffusers' UNet.

    ``source``: a folder written by ``export-pipeline`` or an exported UNet ``.onnx``. ``backend``:
    ``onnxruntime`` or ``openvino``. ``config``: optionally the replaced UNet's config
    (``pipe.unet.config``), so every key the pipeline may read is the original's; the keys the graph
    decides (channels, sample size, conditioning widths) must agree with it.
    """

    def __init__(self, source: str | Path, backend: str = "onnxruntime", *, threads: int | None = None,
                 config: Any = None) -> None:
        if backend not in STAGE_BACKENDS:
            raise TfmqError(f"EngineUNet backend {backend!r} is not supported; choose {' or '.join(STAGE_BACKENDS)}")
        source = Path(source)
        if not source.exists():
            raise TfmqError(f"{source} does not exist")
        self.path, self.engine, self.timesteps, self.latent_shape, self.precision = _resolve(source, backend)
        self.backend = backend
        self.inputs = _graph_inputs(self.path)
        self.config = self._make_config(config)
        self.add_embedding = self._add_embedding()
        self._rows: dict[float, int] = {}
        self._runner: StageRunner | None = StageRunner(backend, self.engine, self.precision, threads).__enter__()

    # --- what diffusers pipelines read --------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def xl(self) -> bool:
        return c.INPUT_TIME_IDS in self.inputs

    def _make_config(self, given: Any) -> Any:
        """A diffusers ``FrozenDict`` (attribute and key access, as ``unet.config``)."""
        import diffusers
        from diffusers.configuration_utils import FrozenDict

        channels, height, width = self.latent_shape
        derived: dict[str, Any] = {
            "_class_name": "UNet2DConditionModel", "_diffusers_version": diffusers.__version__,
            "in_channels": channels, "out_channels": channels,
            "sample_size": height if height == width else [height, width],
            "cross_attention_dim": self._width(c.INPUT_CONDITIONS), "time_cond_proj_dim": None,
            "class_embed_type": None, "encoder_hid_dim_type": None, "addition_embed_type": None,
        }
        if self.xl:
            derived["addition_embed_type"] = "text_time"
            derived["addition_time_embed_dim"] = DEFAULT_ADDITION_TIME_EMBED_DIM
        if given is None:
            merged = derived
        else:
            merged = {**derived, **dict(given)}
            for key in _GRAPH_KEYS:
                if key in given and _norm(given[key]) != _norm(derived[key]):
                    raise TfmqError(f"config[{key!r}] = {given[key]!r} does not match the engine {self.path} "
                                    f"({derived[key]!r}); was it exported from this pipeline's UNet?")
        if merged.get("time_cond_proj_dim") is not None:
            raise TfmqError(f"the engine {self.path} has no timestep_cond input (time_cond_proj_dim must be None)")
        if self.xl:
            width = int(merged["addition_time_embed_dim"]) * int(self._width(c.INPUT_TIME_IDS))
            merged["projection_class_embeddings_input_dim"] = width + int(self._width(c.INPUT_TEXT_EMBEDS))
        return FrozenDict(merged)

    def _width(self, name: str) -> int | None:
        """The last dimension of graph input ``name`` (None when the graph has no such input)."""
        shape = self.inputs.get(name)
        return None if shape is None else int(shape[-1])

    def _add_embedding(self) -> Any:
        """SDXL pipelines compare ``add_embedding.linear_1.in_features`` with what their encoders give."""
        if not self.xl:
            return None
        in_features = int(self.config["projection_class_embeddings_input_dim"])
        return SimpleNamespace(linear_1=SimpleNamespace(in_features=in_features))

    # --- the call ------------------------------------------------------------------------------------
    def rows(self, timestep: Any, batch: int) -> np.ndarray:
        """int64 [batch]: the table row of ``timestep`` (a number, a 0-d or a [batch] tensor)."""
        values = torch.as_tensor(timestep).detach().cpu().reshape(-1).tolist()
        if len(values) not in (1, batch):
            raise TfmqError(f"timestep has {len(values)} values for a batch of {batch}")
        out = []
        for value in values:
            key = round(float(value), 4)
            if key not in self._rows:
                self._rows[key] = timestep_rows(self.timesteps, [value], str(self.path))[0]
            out.append(self._rows[key])
        return np.array(out * batch if len(out) == 1 else out, dtype=np.int64)

    def __call__(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor | None = None,
                 class_labels: Any = None, timestep_cond: Any = None, attention_mask: Any = None,
                 cross_attention_kwargs: dict[str, Any] | None = None,
                 added_cond_kwargs: dict[str, torch.Tensor] | None = None,
                 down_block_additional_residuals: Any = None, mid_block_additional_residual: Any = None,
                 down_intrablock_additional_residuals: Any = None, encoder_attention_mask: Any = None,
                 return_dict: bool = True) -> Any:
        """``UNet2DConditionModel.forward``: the noise (or v) prediction of the exported graph."""
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        _refuse_unsupported(class_labels=class_labels, timestep_cond=timestep_cond, attention_mask=attention_mask,
                            encoder_attention_mask=encoder_attention_mask,
                            cross_attention_kwargs=cross_attention_kwargs or None,
                            down_block_additional_residuals=down_block_additional_residuals,
                            mid_block_additional_residual=mid_block_additional_residual,
                            down_intrablock_additional_residuals=down_intrablock_additional_residuals)
        if self._runner is None:
            raise TfmqError(f"EngineUNet({self.path}) was closed")
        feed = {c.INPUT_SAMPLE: _array(sample), c.INPUT_STEP_INDEX: self.rows(timestep, sample.shape[0])}
        if c.INPUT_CONDITIONS in self.inputs:
            if encoder_hidden_states is None:
                raise TfmqError(f"the engine {self.path} needs encoder_hidden_states")
            feed[c.INPUT_CONDITIONS] = _array(encoder_hidden_states)
        for name in (c.INPUT_TEXT_EMBEDS, c.INPUT_TIME_IDS):
            if name in self.inputs:
                value = (added_cond_kwargs or {}).get(name)
                if value is None:
                    raise TfmqError(f"the engine {self.path} is an SDXL UNet: added_cond_kwargs needs {name!r}")
                feed[name] = _array(value)
        noise = self._runner.run(feed)[c.OUTPUT_NOISE_PRED]
        out = torch.from_numpy(np.asarray(noise, dtype=np.float32)).to(device=sample.device, dtype=sample.dtype)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    forward = __call__

    def close(self) -> None:
        """Free the backend's session (or compiled model)."""
        if self._runner is not None:
            self._runner.__exit__()
            self._runner = None

    def __enter__(self) -> EngineUNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EngineUNet({str(self.engine)!r}, backend={self.backend!r}, precision={self.precision!r})"


def _norm(value: Any) -> Any:
    """Compare config values loosely: a list and a tuple of the same ints are the same."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _array(value: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(value).detach().cpu().float().numpy())


def _refuse_unsupported(**given: Any) -> None:
    """One line naming the first argument the exported graph cannot honour."""
    for name, value in given.items():
        if value is not None:
            raise TfmqError(f"EngineUNet does not support {name} (the exported graph has no such input)")
