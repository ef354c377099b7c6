from unisd.cli.main import main

raise SystemExit(main())
