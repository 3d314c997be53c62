import argparse
import os
import sys

import torch
import torch.optim as optim
import torchvision.transforms as transforms
from azureml.core import Run
from cifar10_data import CIFAR10, CIFAR10DataError
from model import Net

run = Run.get_context()
if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument('--data_path', type=str, required=True, help='Path to the training data')
    parser.add_argument('--learning_rate', type=float, default=0.001, help='Learning rate for SGD')
    parser.add_argument('--momentum', type=float, default=0.9, help='Momentum for SGD')
    parser.add_argument('--epochs', type=int, default=2, help='Passes over the training data')
    parser.add_argument('--batch_size', type=int, default=4, help='Images per mini-batch')
    parser.add_argument('--num_workers', type=int, default=2, help='DataLoader worker processes (0: none)')
    parser.add_argument('--log_interval', type=int, default=2000, help='Log the mean loss every N mini-batches')
    args = parser.parse_args()
    if min(args.epochs, args.batch_size, args.log_interval) < 1 or args.num_workers < 0:
        parser.error("--epochs, --batch_size and --log_interval must be at least 1, --num_workers at least 0")
    print("===== DATA =====")
    print("DATA PATH: " + args.data_path)
    print("LIST FILES IN DATA PATH...")
    try:
        print(os.listdir(args.data_path) if os.path.isdir(args.data_path) else [])
        print("================")
        # prepare DataLoader for CIFAR10 data (cifar10_data checks the files' structure instead of their MD5,
        # so the real dataset and a generated one both load)
        transform = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        ])
        trainset = CIFAR10(root=args.data_path, train=True, download=False, transform=transform)
    except (CIFAR10DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    trainloader = torch.utils.data.DataLoader(
        trainset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers
    )
    net = Net()
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=args.learning_rate, momentum=args.momentum)
    for epoch in range(args.epochs):
        running_loss = 0.0
        for i, data in enumerate(trainloader, 0):
            inputs, labels = data
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            if i % args.log_interval == args.log_interval - 1:
                loss = running_loss / args.log_interval
                run.log('loss', loss)  # log loss metric to AML
                print(f'epoch={epoch + 1}, batch={i + 1:5}: loss {loss:.2f}')
                running_loss = 0.0
    # save the trained weights where Azure ML uploads them from (the run's ./outputs folder)
    os.makedirs('outputs', exist_ok=True)
    torch.save(net.state_dict(), os.path.join('outputs', 'model.pt'))
    print('Finished Training')
