from nanoforge.cli import main

raise SystemExit(main())
