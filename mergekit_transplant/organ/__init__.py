"""Organ files: only the donor tensors a recipe transplants, shippable without the donor.

After the NOT paper's portable donor checkpoints: an organ is a folder that
mergekit can load as a model (the donor's ``config.json`` plus safetensors
holding just the tensors with nonzero strength), a manifest ``organ.json``
(donor and revision, the target it was analysed against with its fingerprint,
each tensor's name, shape, dtype and sha256, the original recipe) and
``recipe.yml``, the same recipe reading the donor's tensors from the organ.
mergekit only reads donor tensors with nonzero strength (the planner hook in
``adapter/registration.py`` drops the rest), so the organ stands in for the donor and
the merge output is bit-identical.

Tensor bytes are copied verbatim, tensor by tensor, from the byte ranges in the
donor's safetensors headers (streamed in chunks, hashed on the way): no model
is ever loaded and no dtype conversion can creep in. Every file name written is
chosen here (``model.safetensors``, ``model-00001-of-00002.safetensors``,
``donor-2/``...); tensor names, model names and manifest fields never become
paths, so neither a recipe nor a manifest can make us write outside the
organ folder.

Layout: a single-donor organ is itself the model folder; a recipe with several
donors gets one sub-folder per donor (``donor-1/``, ``donor-2/``...) and the
manifest and ``recipe.yml`` at the top.

Modules: ``manifest`` (``organ.json``), ``extract``, ``verify``, ``apply``
(the organ's recipe for a target) and ``at`` (re-insertion at another
layer). Applying an organ (verify -> merge -> card) is orchestration and
lives in ``flows.apply_organ``; chunked, hashed reads of tensor byte ranges
live in ``checkpoint.tensor_io``.
"""

from mergekit_transplant.organ.apply import organ_recipe_for
from mergekit_transplant.organ.extract import (
    ExtractResult,
    extract_organ,
    render_organ_recipe,
    rewrite_models,
    write_tensor_folder,
)
from mergekit_transplant.organ.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    RECIPE,
    OrganDonor,
    OrganManifest,
    OrganTensor,
    find_organ_donor,
    read_manifest,
)
from mergekit_transplant.organ.verify import (
    VerifyReport,
    verify_organ,
    verify_recipe_organs,
)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "RECIPE", "ExtractResult", "OrganDonor", "OrganManifest", "OrganTensor",
    "VerifyReport", "extract_organ", "find_organ_donor", "organ_recipe_for", "read_manifest",
    "render_organ_recipe", "rewrite_models", "verify_organ", "verify_recipe_organs", "write_tensor_folder",
]
