"""What gcp-storage-emulator does otherwise than Cloud Storage, made to behave as Cloud Storage does.

* **customTime never goes backwards.** Cloud Storage refuses an update that lowers (or removes) an
  object's ``customTime`` with 400; the emulator keeps the old value and answers 200. After
  :func:`install`, a PATCH (alone or in a JSON batch) that lowers it is answered 400, as Google does.
* **A batch reads objects.** Cloud Storage's JSON API batch serves ``objects.get`` (an object's
  metadata) as it serves patches and deletes; the emulator answers each such part 404. After
  :func:`install` it answers them as its single GET does.
* **Lifecycle rules run on a clock the test moves.** Cloud Storage applies a bucket's lifecycle
  rules by itself (within about a day); the emulator never does. :func:`advance_lifecycle` makes
  ``days`` pass for every object (its ``timeCreated``, ``updated`` and ``customTime`` move back) and
  then applies the ``Delete`` rules whose conditions the sandbox models: ``age``,
  ``daysSinceCustomTime``, ``matchesPrefix``, ``matchesSuffix``. Any other condition is refused with
  what to do, rather than ignored (a rule the sandbox does not understand must not look kinder than
  Google's).

>>> install()                                                            # doctest: +SKIP
>>> advance_lifecycle(storage, days=8)                                   # doctest: +SKIP
['store/machines/vm-0123456789ab.json']
"""

from __future__ import annotations

import datetime
import math
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

CUSTOM_TIME_LOWERED = "Custom time cannot be decreased or removed: the object's customTime is {current}, the update gives {given}."
_MODELLED = {"age", "daysSinceCustomTime", "matchesPrefix", "matchesSuffix"}
_STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"
_installed = threading.Lock()
_done = False


class CustomTimeLowered(ValueError):
    """An update asked for an earlier customTime than the object's."""


def _parse(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def install() -> None:
    """Makes the emulator's object PATCH (single and in batches) refuse a lower customTime, and its
    batches serve an object's GET (idempotent; the emulator's handlers are module-level, so this
    holds for every emulator in the process)."""
    global _done
    with _installed:
        if _done:
            return
        from gcp_storage_emulator import server
        from gcp_storage_emulator.exceptions import NotFound
        from gcp_storage_emulator.handlers import objects

        lenient_patch_object = objects._patch_object

        def strict_patch_object(obj: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
            if metadata and "customTime" in metadata and obj.get("customTime"):
                given = metadata["customTime"]
                if given is None or _parse(given) < _parse(obj["customTime"]):
                    raise CustomTimeLowered(CUSTOM_TIME_LOWERED.format(current=obj["customTime"], given=given))
            return lenient_patch_object(obj, metadata)

        lenient_patch, lenient_batch_patch = objects.patch, objects._BATCH_METHOD_HANDLERS["PATCH"]

        def patch(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
            try:
                lenient_patch(request, response, storage, *args, **kwargs)
            except CustomTimeLowered as error:
                response.status = HTTPStatus.BAD_REQUEST
                response.json({"error": {"code": 400, "message": str(error), "errors": [{"message": str(error), "reason": "invalid"}]}})

        def batch_patch(request: Any, item: Any, storage: Any, *args: Any) -> bool:
            try:
                return lenient_batch_patch(request, item, storage, *args)
            except CustomTimeLowered as error:
                objects._batch_write_bad_request(args[-1], error)
                return True

        def batch_get(request: Any, item: Any, storage: Any, bucket_name: str, object_id: str | None, meta: Any, response: Any) -> bool:
            if not object_id:
                return False  # answered 404, as the emulator answers what it does not serve
            try:
                found = storage.get_file_obj(bucket_name, object_id)
            except NotFound:
                return False
            objects._batch_write_json(response, "HTTP/1.1 200 OK", found)
            return True

        objects._patch_object = strict_patch_object
        objects._BATCH_METHOD_HANDLERS["PATCH"] = batch_patch
        objects._BATCH_METHOD_HANDLERS["GET"] = batch_get
        for _, handlers in server.HANDLERS:
            for method, handler in list(handlers.items()):
                if handler is lenient_patch:
                    handlers[method] = patch
        _done = True


def advance_lifecycle(storage: Any, days: float, *, bucket: str | None = None, say: Callable[[str], None] | None = None) -> list[str]:
    """Makes ``days`` pass for every object of the emulator's ``storage`` (or of ``bucket`` only):
    their times move back, and later writes are stamped now, as on Google. Then applies each
    bucket's Delete rules, as Cloud Storage's daily lifecycle pass does. Returns the
    ``bucket/object`` names deleted."""
    shift = datetime.timedelta(days=days)
    deleted: list[str] = []
    now = datetime.datetime.now(datetime.UTC)
    for bucket_name, found in list(storage.buckets.items()):
        if bucket is not None and bucket_name != bucket:
            continue
        rules = [rule for rule in (found.get("lifecycle") or {}).get("rule", []) if rule.get("action", {}).get("type") == "Delete"]
        for rule in rules:
            unknown = set(rule.get("condition", {})) - _MODELLED
            if unknown:
                raise NotImplementedError(
                    f"bucket {bucket_name}: the sandbox does not model lifecycle conditions {sorted(unknown)}; "
                    f"it models {sorted(_MODELLED)}"
                )
        for name, obj in list(storage.objects.get(bucket_name, {}).items()):
            for key in ("timeCreated", "updated", "customTime"):
                if obj.get(key):
                    obj[key] = (_parse(obj[key]) - shift).strftime(_STAMP)
            if any(_matches(rule["condition"], name, obj, now) for rule in rules):
                storage.delete_file(bucket_name, name)
                deleted.append(f"{bucket_name}/{name}")
    if say is not None and deleted:
        say(f"lifecycle deleted {', '.join(deleted)}")
    return deleted


def _matches(condition: dict[str, Any], name: str, obj: dict[str, Any], now: datetime.datetime) -> bool:
    """Whether every condition of a rule holds for object ``name`` (Google: all conditions, ANDed;
    ages in whole days elapsed)."""

    def days_since(key: str) -> float:
        return math.floor((now - _parse(obj[key])).total_seconds() / 86400) if obj.get(key) else -math.inf

    checks = {
        "age": lambda n: days_since("timeCreated") >= n,
        "daysSinceCustomTime": lambda n: days_since("customTime") >= n,
        "matchesPrefix": lambda prefixes: any(name.startswith(p) for p in prefixes),
        "matchesSuffix": lambda suffixes: any(name.endswith(s) for s in suffixes),
    }
    return all(checks[key](value) for key, value in condition.items())
