"""Check a merged model folder is fit for the Hub, then upload it with huggingface_hub.

The checks, in order of cost: no pickle files anywhere (they run code when
loaded); safetensors headers intact; the model card parses and its metadata
is valid; the weights' size is plausible (safetensors bytes ≈ the parameter
count of the model its config describes × the config's dtype size, which
catches a truncated merge, a wrong ``out_dtype`` or a duplicated tensor);
a tokenizer is there; and the folder loads with transformers with no missing,
unexpected or mis-shaped weights. ``--dry-run`` stops before the network and
prints exactly what would be uploaded. Offline (``HF_HUB_OFFLINE``), an
unreachable Hub, a missing token or a refused upload are reported as such,
after the local checks have run.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from mergekit_transplant.checkpoint import DTYPE_BYTES, PICKLE_SUFFIXES, hub_id_problem, read_header, weight_files
from mergekit_transplant.checkpoint.dtypes import BYTES_PER_FLOAT_NAME
from mergekit_transplant.checkpoint.environment import hub_offline
from mergekit_transplant.errors import TransplantError

#: suffixes refused anywhere in a folder to publish (pickle and friends)
UNSAFE_SUFFIXES = tuple(sorted(set(PICKLE_SUFFIXES) | {".pickle", ".pkl", ".joblib"}))
#: relative tolerance of the size check (a few fp32 norms in a bf16 model stay inside it)
SIZE_TOLERANCE = 0.02
CONFIG_DTYPE_BYTES = BYTES_PER_FLOAT_NAME


@dataclass
class FolderCheck:
    folder: Path
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    parameters: int = 0  # of the model the config describes
    stored_elements: int = 0  # in the safetensors files
    weight_bytes: int = 0  # tensor data in the safetensors files
    expected_bytes: int = 0
    dtype: Optional[str] = None
    loaded: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        if self.errors:
            raise TransplantError(f"{self.folder} is not ready to publish:\n  " + "\n  ".join(self.errors))


@dataclass
class UploadPlan:
    repo_id: str
    private: bool
    folder: Path
    files: List[Tuple[str, int]]  # (path relative to the folder, bytes)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def format(self) -> str:
        width = max((len(name) for name, _ in self.files), default=4)
        lines = [
            f"repo: {self.repo_id} ({'private' if self.private else 'public'})",
            f"folder: {self.folder}",
            f"{len(self.files)} file(s), {_human(self.total_bytes)}:",
        ]
        lines += [f"  {name:<{width}}  {_human(size):>10}" for name, size in self.files]
        return "\n".join(lines)


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def upload_files(folder: Path) -> List[Tuple[str, int]]:
    """Every regular file under ``folder`` except hidden ones (temp files, caches)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            out.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    return out


def _config_dtype(config: dict) -> Optional[str]:
    value = config.get("dtype") or config.get("torch_dtype")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("dtype") or config["text_config"].get("torch_dtype")
    return str(value).replace("torch.", "") if value else None


def _expected_parameters(folder: Path) -> int:
    """Parameters of the model the config describes, built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return int(model.num_parameters())


def verify_folder(folder: os.PathLike | str, *, load: bool = True, require_base_model: bool = False) -> FolderCheck:
    """Run every publish check; collect all problems rather than stopping at the first."""
    from huggingface_hub import ModelCard

    from mergekit_transplant.card import CARD_FILE, validate_card
    from mergekit_transplant.checkpoint import load_config

    folder = Path(folder)
    check = FolderCheck(folder=folder)
    if not folder.is_dir():
        raise TransplantError(f"{folder}: no such folder")

    unsafe = [name for name, _ in upload_files(folder) if name.lower().endswith(UNSAFE_SUFFIXES)]
    if unsafe:
        check.errors.append(
            f"pickle file(s) {', '.join(unsafe[:3])}{' ...' if len(unsafe) > 3 else ''}: pickles run code when "
            "loaded; publish safetensors only (delete or convert them)"
        )
    try:
        config = load_config(folder)
    except TransplantError as error:
        check.errors.append(str(error))
        return check

    try:
        files = weight_files(folder)
        tensors = {}
        for file in files:
            tensors.update(read_header(file))
    except TransplantError as error:
        check.errors.append(str(error))
        tensors = {}
    check.stored_elements = sum(t.numel for t in tensors.values())
    check.weight_bytes = sum(t.nbytes for t in tensors.values())

    card = folder / CARD_FILE
    if not card.is_file():
        check.errors.append(f"no model card ({CARD_FILE}); write one with: mergekit-transplant card {folder}")
    else:
        problems = validate_card(card, require_base_model=require_base_model)
        check.errors += [f"{CARD_FILE}: {p}" for p in problems]
        if not problems and not ModelCard.load(card).data.get("base_model"):
            check.warnings.append(
                f"{CARD_FILE} has no base_model: the Hub will not link this merge to its parents "
                f"(mergekit-transplant card {folder} --hub-id PATH=org/name ...)"
            )

    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        check.errors.append("no tokenizer files (tokenizer.json / tokenizer.model): users could not run the model")
    if not (folder / "generation_config.json").is_file():
        check.warnings.append("no generation_config.json: generation will use transformers' defaults")

    check.dtype = _config_dtype(config)
    if tensors:
        try:
            check.parameters = _expected_parameters(folder)
        except Exception as error:
            check.errors.append(f"config.json does not build a transformers model ({type(error).__name__}: {error})")
        if check.parameters:
            size = CONFIG_DTYPE_BYTES.get(check.dtype or "")
            if size is None:
                stored = {t.dtype for t in tensors.values()}
                size = DTYPE_BYTES.get(next(iter(stored)), 0) if len(stored) == 1 else 0
                check.warnings.append(
                    f"config.json gives no known dtype ({check.dtype!r}); size checked against the stored dtype"
                )
            check.expected_bytes = check.parameters * size
            if check.stored_elements != check.parameters:
                check.errors.append(
                    f"the safetensors hold {check.stored_elements:,} parameters, the config describes "
                    f"{check.parameters:,}: missing, extra or duplicated tensors"
                )
            elif check.expected_bytes and abs(check.weight_bytes - check.expected_bytes) > SIZE_TOLERANCE * check.expected_bytes:
                check.errors.append(
                    f"the safetensors hold {check.weight_bytes:,} bytes of weights; {check.parameters:,} "
                    f"parameters in {check.dtype} would be {check.expected_bytes:,}: stored dtypes "
                    f"({', '.join(sorted({t.dtype for t in tensors.values()}))}) do not match the config"
                )

    if load and not check.errors:
        try:
            from transformers import AutoModelForCausalLM

            model, info = AutoModelForCausalLM.from_pretrained(
                str(folder), use_safetensors=True, output_loading_info=True
            )
            del model
        except Exception as error:
            check.errors.append(f"transformers cannot load it ({type(error).__name__}: {error})")
        else:
            for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
                found = sorted(str(k) for k in (info.get(key) or ()))
                if found:
                    check.errors.append(f"transformers reports {key.replace('_', ' ')}: {', '.join(found[:3])}")
            check.loaded = not check.errors
    return check


def _escape_glob(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def plan_upload(folder: os.PathLike | str, repo_id: str, *, private: bool = False) -> UploadPlan:
    problem = hub_id_problem(repo_id)
    if problem:
        raise TransplantError(f"--repo-id {repo_id!r}: {problem}")
    folder = Path(folder)
    return UploadPlan(repo_id=repo_id, private=private, folder=folder, files=upload_files(folder))


#: remote files a new upload replaces: weights of a previous upload that the folder no longer has are deleted
STALE_PATTERNS = ["*.safetensors", "*.safetensors.index.json"]


def branch_head(api, repo_id: str, revision: Optional[str]) -> Optional[str]:
    """The commit ``revision`` (default main) of ``repo_id`` points at now; None for a new repo or branch."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = api.repo_info(repo_id, repo_type="model", revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None
    return getattr(info, "sha", None)


def publish(
    folder: os.PathLike | str,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    load: bool = True,
    token: Optional[str] = None,
    api=None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    parent_commit: Optional[str] = None,
) -> Tuple[FolderCheck, UploadPlan, Optional[str]]:
    """Verify ``folder``, then (unless ``dry_run``) create the repo and upload exactly the planned files.

    The branch's head is read before the checks (or given as ``parent_commit``)
    and the upload is refused if the branch moved meanwhile: checked here just
    before the upload, and passed to the Hub as ``parent_commit`` so the commit
    itself fails if the branch moves during the upload. Weights of a previous
    upload that the folder does not have are deleted in the same commit
    (``STALE_PATTERNS``). Returns the check, the plan and the commit or PR URL
    (None on a dry run).
    """
    plan = plan_upload(folder, repo_id, private=private)
    passed = f"{plan.folder} passed every local check, but nothing was uploaded: "
    where = f"{repo_id}{f'@{revision}' if revision else ''}"
    head, unreachable = None, ""
    offline = not dry_run and api is None and hub_offline()
    if not dry_run and not offline:
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        try:
            head = parent_commit or branch_head(api, repo_id, revision)
        except Exception as error:
            unreachable = hub_problem(error, repo_id)  # reported after the local checks, like an offline Hub
            if unreachable is None:
                raise
    check = verify_folder(folder, load=load)
    check.raise_for_errors()
    if dry_run:
        return check, plan, None
    if unreachable:
        raise TransplantError(passed + unreachable)
    if offline:
        raise TransplantError(
            passed + "offline mode is set (HF_HUB_OFFLINE), so the Hugging Face Hub cannot be reached; "
            "unset it to upload (--dry-run runs the checks without the network)"
        )
    try:
        now = branch_head(api, repo_id, revision) if head is not None else None
        if head is not None and now != head:
            raise TransplantError(
                passed + f"{where} moved since the check (was {head[:12]}, now {str(now)[:12]}); "
                "look at the new commit, then publish again")
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and not create_pr and head is None:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, repo_type="model", folder_path=str(plan.folder),
            allow_patterns=[_escape_glob(name) for name, _ in plan.files],
            delete_patterns=list(STALE_PATTERNS),
            revision=revision, create_pr=create_pr, parent_commit=head,
            commit_message="Upload transplant merge (mergekit-transplant)",
        )
    except TransplantError:
        raise
    except Exception as error:
        problem = hub_problem(error, repo_id)
        if problem is None:
            raise
        raise TransplantError(passed + problem) from None
    url = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or str(info)
    return check, plan, url


def hub_problem(error: BaseException, repo_id: str) -> Optional[str]:
    """A one-line reason for a failed Hub call that is the user's to fix, or None for a bug."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    first = (str(error).strip().splitlines() or [""])[0].strip()
    if isinstance(error, OfflineModeIsEnabled):
        return ("offline mode is set (HF_HUB_OFFLINE), so the Hugging Face Hub cannot be reached; "
                "unset it to upload")
    if isinstance(error, LocalTokenNotFoundError):
        return "no Hub token: pass --token, set HF_TOKEN or run `hf auth login`"
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        hint = {401: "check --token / HF_TOKEN / `hf auth login`",
                403: f"the token may not write to {repo_id.split('/')[0]}"}.get(status, "")
        hint = hint or ("the branch moved during the upload (parent_commit no longer its head); publish again"
                        if status == 412 else "")
        return f"the Hugging Face Hub refused it (HTTP {status}: {first})" + (f"; {hint}" if hint else "")
    # huggingface_hub's HTTP client (httpx, or httpx2 in huggingface_hub 2.x) raises its own transport
    # errors, not ConnectionError: match them by class name so either client is covered
    transport = {"TransportError", "ConnectError", "TimeoutException", "NetworkError", "ProxyError", "ConnectionError",
                 "Timeout"}
    if isinstance(error, (ConnectionError, TimeoutError)) or any(
        cls.__name__ in transport and cls.__module__.split(".")[0].startswith(("httpx", "requests", "urllib3"))
        for cls in type(error).__mro__
    ):
        return (f"the Hugging Face Hub cannot be reached ({type(error).__name__}: {first}); "
                "check the network, a proxy or HF_ENDPOINT")
    return None


def matches_plan(plan: UploadPlan, name: str) -> bool:
    """Whether ``name`` is selected by the allow patterns the upload passes (for tests and docs)."""
    return any(fnmatch.fnmatch(name, _escape_glob(f)) for f, _ in plan.files)


__all__ = ["FolderCheck", "UploadPlan", "verify_folder", "plan_upload", "publish", "upload_files"]
