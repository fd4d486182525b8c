"""``python -m cohort ...``: the ``cohort`` command where its console script is not on ``PATH``
(a job script that names the interpreter of an environment it does not activate)."""

from cohort.cli import main

raise SystemExit(main())
