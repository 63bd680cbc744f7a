"""The MLflow model registry: register each evaluated model once; move ``champion`` only on a better REGE.

MLflow has no transaction over a read and an alias move, and two evaluations may finish
together, so :func:`register_and_maybe_promote` keeps three rules that hold whatever the
interleaving:

- **Registration is idempotent by content.** Each version carries the SHA-256 of the
  checkpoint files that were evaluated (``checkpoint_sha256``,
  :func:`~emola.model.reference.checkpoint_sha256`); registering the same files again returns
  the version that has them (when two registrations of the same files race, the later one
  removes its own version). Loading the version checks the files against it.
- **Promotion is compare-and-set.** The champion and its score are read, the decision made,
  and the champion read again right before the alias moves; if it changed meanwhile, the
  decision is made again against the new one. A version that does not beat the champion
  never writes: it leaves the alias alone and says so.
- **The last writer checks.** After moving the alias, the promoter looks once more at the
  champion and at every version scored on the same test set since the champion it replaced:
  if a better one exists (a promotion that raced with this one), the alias goes to the best.
  Every promoter does this after its write, so when all are done ``champion`` is the best of
  them, never the one that happened to write last.
"""

from __future__ import annotations

from pathlib import Path

from emola.model.reference import CHECKPOINT_SHA_TAG, checkpoint_sha256, run_model_source

CHAMPION = "champion"
SCORE_TAG, TEST_SET_TAG = "S_rege_total", "test_set"


def register_and_maybe_promote(client, name: str, run_id: str, score: float, test_set: str,
                               tags: dict[str, str], checkpoint: Path | str | None = None) -> dict:
    """Register the model run ``run_id`` logged (:func:`run_model_source`) as a version of ``name``
    (or find the version that already holds ``checkpoint``'s files); alias it ``champion`` if its
    score beats the current champion's on the same test set (or there is no champion yet).

    ``score``: the summed S_rege of the evaluated tasks; ``test_set``: a hash of the test
    manifest, so scores on different test sets are never compared; ``checkpoint``: the folder
    that was evaluated, whose files the version records.
    """
    digest = checkpoint_sha256(checkpoint) if checkpoint is not None else None
    version, existed = _register(client, name, run_id, {**tags, SCORE_TAG: f"{score:.6f}", TEST_SET_TAG: test_set},
                                 digest)
    if existed:
        score = float(version.tags.get(SCORE_TAG, score))
        test_set = version.tags.get(TEST_SET_TAG, test_set)
    promoted, reason = _promote(client, name, version, score, test_set)
    return {"name": name, "version": int(version.version), "champion": promoted, "reason": reason,
            "checkpoint_sha256": digest, "already_registered": existed}


def _register(client, name: str, run_id: str, tags: dict[str, str], digest: str | None):
    """``(version, existed)``: the version holding ``digest``'s files, or a new one."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException:   # created meanwhile by a concurrent registration
            client.get_registered_model(name)
    if digest and (same := _with_digest(client, name, digest)):
        return same[0], True
    source, model_id = run_model_source(client, run_id)
    version = client.create_model_version(name, source, run_id=run_id, model_id=model_id,
                                          tags={**tags, **({CHECKPOINT_SHA_TAG: digest} if digest else {})})
    if digest and (same := _with_digest(client, name, digest)) and int(same[0].version) < int(version.version):
        client.delete_model_version(name, version.version)   # a concurrent registration of the same files won
        return same[0], True
    return client.get_model_version(name, version.version), False


def _with_digest(client, name: str, digest: str) -> list:
    found = client.search_model_versions(f"name = '{name}' and tags.{CHECKPOINT_SHA_TAG} = '{digest}'")
    return sorted(found, key=lambda v: int(v.version))


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _score(version) -> float:
    return float(version.tags.get(SCORE_TAG, "-inf"))


def _promote(client, name: str, version, score: float, test_set: str) -> tuple[bool, str]:
    """Compare-and-set of ``champion`` (module docstring); ``(champion now, why)``."""
    current = _champion(client, name)
    for _ in range(8):
        if current is not None and current.version == version.version:
            return True, "already champion"
        if current is not None and current.tags.get(TEST_SET_TAG) != test_set:
            return False, f"champion v{current.version} was scored on another test set; not compared (left alone)"
        if current is not None and not score > _score(current):
            return False, f"does not beat champion v{current.version} ({_score(current):.2f}); left alone"
        reason = "no champion yet" if current is None else f"beats champion v{current.version} ({_score(current):.2f})"
        again = _champion(client, name)   # compare-and-set: the champion right before the move
        if (again and again.version) != (current and current.version):
            current = again               # moved meanwhile: decide again against the new one
            continue
        client.set_registered_model_alias(name, CHAMPION, version.version)
        best = _settle(client, name, test_set, replaced=int(current.version) if current is not None else 0)
        if best.version == version.version:
            return True, reason
        return False, f"v{best.version}, evaluated meanwhile, beats it ({_score(best):.2f}); it is champion"
    return False, "the champion kept moving; left alone"


def _settle(client, name: str, test_set: str, replaced: int):
    """After a write: the champion becomes the best of itself and every version scored on ``test_set`` since
    version ``replaced`` (ties: the earlier version); returns it."""
    for _ in range(8):
        current = _champion(client, name)
        rivals = [v for v in client.search_model_versions(f"name = '{name}' and tags.{TEST_SET_TAG} = '{test_set}'")
                  if int(v.version) > replaced]
        pool = rivals + ([current] if current is not None else [])
        best = max(pool, key=lambda v: (_score(v), -int(v.version)))
        if current is not None and best.version == current.version:
            return current
        client.set_registered_model_alias(name, CHAMPION, best.version)
    return _champion(client, name)
