"""The compiled frame path (wsgate._framecore) is optional: without a C
compiler the install still succeeds and wsgate runs Autobahn's Python path
(its startup log says so). Everything else is in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wsgate._framecore",
            sources=["wsgate/_framecore.c", "wsgate/_framezlib.c", "wsgate/_framequick.c"],
            depends=["wsgate/_frameutf8.h", "wsgate/_framequick.h"],
            libraries=["z"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
