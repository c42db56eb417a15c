from edge_recorder.cli import main

raise SystemExit(main())
