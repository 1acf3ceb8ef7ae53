from neuralmorph.cli import main

main()
