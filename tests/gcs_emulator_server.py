"""`gcp-storage-emulator` with the two GCS behaviours it lacks and the checkpoints rely on.

Run as `python tests/gcs_emulator_server.py start --host … --port …` (the emulator's own arguments).
GCS sends an object's generation in the `x-goog-generation` header of a download, and refuses a write or
delete whose `ifGenerationMatch` differs from the object's generation (0: the object must not exist)
with 412. The emulator (2026.7) does neither; tensorstore's OCDBT checkpoints read generations from
downloads and write conditionally on them, and the workdir lock object is a conditional write, so both
are added here before the emulator's own `main` runs.
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket: str, name: str) -> str:
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"


def _precondition_failed(request, storage, name: str | None) -> bool:
    wanted = request.query.get("ifGenerationMatch")
    return bool(wanted and name and _generation(storage, request.params["bucket_name"], name) != wanted[0])


def _refuse(response) -> None:
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json({"error": {"code": 412, "message": "conditionNotMet"}})


def _with_preconditions(handler, name_of):
    def wrapped(request, response, storage, *args, **kwargs):
        if _precondition_failed(request, storage, name_of(request)):
            return _refuse(response)
        return handler(request, response, storage, *args, **kwargs)
    return wrapped


def _with_generation_header(handler):
    def wrapped(request, response, storage, *args, **kwargs):
        if _precondition_failed(request, storage, request.params["object_id"]):
            return _refuse(response)
        generation = _generation(storage, request.params["bucket_name"], request.params["object_id"])
        if generation != "0":
            response["x-goog-generation"] = generation
            response["x-goog-metageneration"] = "1"
        return handler(request, response, storage, *args, **kwargs)
    return wrapped


def _patch() -> None:
    replacements = {
        objects.download: _with_generation_header(objects.download),
        objects.insert: _with_preconditions(objects.insert, lambda r: (r.query.get("name") or [None])[0]),
        objects.delete: _with_preconditions(objects.delete, lambda r: r.params["object_id"]),
    }
    for _, handlers in server.HANDLERS:  # the route table holds the functions themselves
        for method, handler in list(handlers.items()):
            handlers[method] = replacements.get(handler, handler)
    objects.insert = replacements[objects.insert]  # the server's fallback route looks it up by name
    objects.download = replacements[objects.download]  # `get ?alt=media` calls it by name


if __name__ == "__main__":
    _patch()
    sys.exit(main(sys.argv[1:]))
