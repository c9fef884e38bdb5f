from otaudit_collector.cli import main

raise SystemExit(main())
