"""The MLflow model registry: register each evaluated model; move ``champion`` only on a better REGE."""

from __future__ import annotations

from emola.model.reference import run_model_source

CHAMPION = "champion"


def register_and_maybe_promote(client, name: str, run_id: str, score: float, test_set: str,
                               tags: dict[str, str]) -> dict:
    """Register the model run ``run_id`` logged (:func:`run_model_source`) as a new version of
    ``name``; alias it ``champion`` if its score beats the current champion's on the same test
    set (or there is no champion yet).

    ``score``: the summed S_rege of the evaluated tasks; ``test_set``: a hash of the test
    manifest, so scores on different test sets are never compared.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    source, model_id = run_model_source(client, run_id)
    version = client.create_model_version(name, source, run_id=run_id, model_id=model_id, tags={
        **tags, "S_rege_total": f"{score:.6f}", "test_set": test_set})
    current = None
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        pass
    promoted, reason = False, ""
    if current is None:
        promoted, reason = True, "no champion yet"
    elif current.tags.get("test_set") != test_set:
        reason = f"champion v{current.version} was scored on another test set; not compared"
    elif score > float(current.tags.get("S_rege_total", "-inf")):
        promoted, reason = True, f"beats champion v{current.version} ({float(current.tags['S_rege_total']):.2f})"
    else:
        reason = f"does not beat champion v{current.version} ({float(current.tags['S_rege_total']):.2f})"
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return {"name": name, "version": int(version.version), "champion": promoted, "reason": reason}
