from ftpalg.cli import main

raise SystemExit(main())
