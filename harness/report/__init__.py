"""Reports on results directories: ``editbench report`` (leaderboard) and ``editbench compare``.

Layers, each importing only the ones before it: :mod:`.model` (reading run and sweep directories:
the only file access), :mod:`.leaderboard` (the leaderboard model, what leaderboard.json holds),
:mod:`.figures` (reproducible figure files) and :mod:`.plotting` (every figure), :mod:`.markdown`
and :mod:`.html` (renderers), :mod:`.report` (the ``report`` subcommand) and :mod:`.compare`.
"""
