"""The README's Serve application, baked into the rehearsal's image as a user bakes theirs into the Ray image
(scripts/test copies it into the image's site-packages): `import_path: hello:app`."""

from ray import serve


@serve.deployment
class Hello:
    def __call__(self, request: object) -> str:
        return "hello"


app = Hello.bind()  # type: ignore[attr-defined]  # serve.deployment's class
