"""The Dockerfile builder's front end: from a context and a Dockerfile to a build plan.

    dockerfile.py    the Dockerfile's text to instructions (BuildKit's own parser, checked)
    expand.py        Docker's variable and word expansion ($V, ${V:-x}, quotes, escapes)
    mounts.py        RUN's --mount and --network flags, parsed and checked
    plan.py          instructions + build args + target to the stages and steps to run
    dockerignore.py  .dockerignore patterns, matched as Docker matches them
    fsview.py        read-only views of a tree: a directory (the context), merged layers
    context.py       the build context, COPY source globs, content digests of sources
    copying.py       the layer tar of a COPY or ADD, its digest, ADD's downloads

It knows nothing of the store or of sandboxes: the executor gives it image configs and
directories, and runs what the plan says.
"""
